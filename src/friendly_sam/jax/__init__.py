"""F-SAM, SAM and ASAM for JAX: small composable optax transformations (``pip install 'friendly-sam[jax]'``).

Nothing here imports torch or the PyTorch side of the package; the PyTorch side never imports this.
``import friendly_sam.jax`` loads no torch module (the package's top-level names are lazy). See ``docs/jax.md`` for the optax recipe and the differences from ``optax.contrib.sam``.

* transformations: :func:`friendly_direction` (``g -> g - sigma m``, the EMA in its state),
  :func:`normalize` (``d / (||d|| + eps)``, ASAM's form with ``adaptive=True``), :func:`pmean_gradients`;
* perturbations: :func:`fsam_perturbation`, :func:`sam_perturbation` (the clean gradient -> the ascent step);
* optimizers with ``optax.contrib.sam``'s protocol: :func:`fsam`, :func:`sam` (their shared keywords:
  :class:`SharpnessAwareOptions`), :func:`two_pass`.
"""

from __future__ import annotations

try:
    import jax  # noqa: F401
    import optax  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised by the import test without jax
    raise ImportError(
        f"friendly_sam.jax needs JAX and optax ({err}); install them with: pip install 'friendly-sam[jax]'"
    ) from err

from .optimizers import (
    MODES,
    PER_REPLICA,
    SYNCHRONIZED,
    SharpnessAwareOptions,
    fsam,
    fsam_perturbation,
    sam,
    sam_perturbation,
    two_pass,
)
from .transforms import (
    NORM_EPS,
    FriendlyDirectionState,
    friendly_direction,
    friendly_state,
    global_norm,
    normalize,
    pmean_gradients,
)

__all__ = [
    "MODES",
    "NORM_EPS",
    "PER_REPLICA",
    "SYNCHRONIZED",
    "FriendlyDirectionState",
    "SharpnessAwareOptions",
    "friendly_direction",
    "friendly_state",
    "fsam",
    "fsam_perturbation",
    "global_norm",
    "normalize",
    "pmean_gradients",
    "sam",
    "sam_perturbation",
    "two_pass",
]
