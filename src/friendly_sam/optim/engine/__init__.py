"""The two-pass update, written once: every entry point is a translation onto :class:`TwoPassEngine`.

One update of SAM / F-SAM over the micro-batches ``b_1..b_k`` of one optimizer step (docs/integrations.md)::

    clean pass of each b_i        (the caller's forward + backward, in its precision context)
    first_step(scaler)            unscale, direction, one global norm, w <- w + e
    perturbed pass of each b_i    the same callable, same data, under perturbed_pass(): BatchNorm running
                                  statistics frozen, the RNG replayed if asked
    clip the applied gradient     (the framework's clipping; also on unperturbed perturb_every steps)
    second_step(scaler)           restore w exactly, base step; scaler.update()

Who runs the clean pass differs (our ``training_step`` and ``AcceleratedSAM`` call the engine's
:meth:`TwoPassEngine.clean_pass`, Lightning and the HF Trainer run it themselves right after
:meth:`TwoPassEngine.add`); the perturbed pass of a micro-batch is always the callable given to ``add``,
so it sees the same data and runs in the same precision context as the clean one. ``step(closure)`` is the
one-micro-batch case, driven by the optimizer itself (:func:`perturbed_pass` with :func:`bound_model`).

Randomness (``rng``): ``"fresh"`` (default, as the official code and the hand-written loop): dropout (and
any random op inside the step) draws anew in the perturbed pass. ``"replay"``: the CPU and CUDA generator
states are captured before each micro-batch's clean pass and restored for its perturbed pass (under
``torch.random.fork_rng``, so afterwards the generators continue from where the clean passes left them):
a random augmentation or dropout mask inside the step is the same in both passes.
"""

from __future__ import annotations

from .ascent import ascent_fraction_of, ascent_size, slice_batch
from .closure import ClosurePasses
from .passes import (
    RNG_MODES,
    RngState,
    bind_model,
    bound_model,
    frozen_bn_stats_of_every_module,
    is_two_pass,
    perturbed_pass,
    unwrap_two_pass,
)
from .update import MicroBatch, TwoPassEngine, check_single_clip, clip_applied_gradient

__all__ = [
    "RNG_MODES",
    "ClosurePasses",
    "MicroBatch",
    "RngState",
    "TwoPassEngine",
    "ascent_fraction_of",
    "ascent_size",
    "bind_model",
    "bound_model",
    "check_single_clip",
    "clip_applied_gradient",
    "frozen_bn_stats_of_every_module",
    "is_two_pass",
    "perturbed_pass",
    "slice_batch",
    "unwrap_two_pass",
]
