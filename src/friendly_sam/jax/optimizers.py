"""Ready SAM / ASAM / F-SAM for optax: the perturbation chains and the two-pass optimizers built on them.

Two levels, use whichever fits the training loop:

* the **perturbation** (:func:`fsam_perturbation`, :func:`sam_perturbation`): a plain
  ``optax.GradientTransformation`` mapping the clean gradient ``g`` at ``w`` to the ascent step ``e``
  (``w + e`` is where the second gradient is taken). A hand-written two-gradient step::

      e, p_state = perturbation.update(g, p_state, params)
      g2 = grad(loss)(optax.apply_updates(params, e), batch)
      updates, o_state = base.update(g2, o_state, params)      # from w, not w + e
      params = optax.apply_updates(params, updates)

* the **two-pass optimizer** (:func:`fsam`, :func:`sam`): one ``optax.GradientTransformationExtraArgs``
  with the protocol of ``optax.contrib.sam`` (it *is* ``optax.contrib.sam`` with F-SAM's adversary, its
  state kept across steps): ``opaque_mode=True`` (default) takes one ``update(g, state, params,
  grad_fn=...)`` per step and never moves the weights outside; ``opaque_mode=False`` alternates a
  perturbing call and an updating call, like ``optax.contrib.sam``'s default.

Data parallel (``batch_axis_name``, inside ``pmap`` / ``shard_map`` / a named ``vmap``), the two modes of
the PyTorch side (``docs/distributed.md``): ``"per-replica"`` perturbs each replica with its own clean
gradient and keeps one EMA per replica (one gradient all-reduce per step); ``"synchronized"`` averages the
clean gradient first (one shared perturbation, the EMA of the global gradient: F-SAM on the global batch).
Both average the perturbed gradient before the base step, so the parameters stay identical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

import optax

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; annotations only

from .transforms import NORM_EPS, check_hyperparameter, friendly_direction, normalize, pmean_gradients

__all__ = [
    "MODES",
    "PER_REPLICA",
    "SYNCHRONIZED",
    "SharpnessAwareOptions",
    "fsam",
    "fsam_perturbation",
    "sam",
    "sam_perturbation",
    "two_pass",
]

PER_REPLICA = "per-replica"
SYNCHRONIZED = "synchronized"
MODES = (PER_REPLICA, SYNCHRONIZED)


def sam_perturbation(
    rho: float = 0.05, *, adaptive: bool = False, eps: float = NORM_EPS
) -> optax.GradientTransformation:
    """SAM's (ASAM's) ascent step: ``e = rho * g / (||g|| + eps)`` (adaptive: ``rho w^2 g / (||w g|| + eps)``).

    Stateless. ``adaptive=True`` needs ``params`` in ``update`` (ASAM wants a larger ``rho``, e.g. 0.5-2).
    """
    rho = check_hyperparameter("rho", rho, low=0.0)
    return optax.chain(normalize(eps, adaptive=adaptive), optax.scale(rho))


def fsam_perturbation(
    rho: float = 0.05,
    sigma: float = 1.0,
    lmbda: float = 0.9,
    *,
    adaptive: bool = False,
    eps: float = NORM_EPS,
) -> optax.GradientTransformation:
    """F-SAM's ascent step: ``d = g - sigma m`` (then the EMA update), ``e = rho d / (||d|| + eps)``.

    ``optax.chain(friendly_direction(sigma, lmbda), normalize(eps, adaptive=adaptive), optax.scale(rho))``;
    the EMA lives in the first state of the chain. See :func:`friendly_direction` for the ordering.
    Official recipe (CIFAR, SGD): ``rho=0.2, sigma=1, lmbda=0.6``.
    """
    rho = check_hyperparameter("rho", rho, low=0.0)
    return optax.chain(friendly_direction(sigma, lmbda), normalize(eps, adaptive=adaptive), optax.scale(rho))


def two_pass(
    optimizer: optax.GradientTransformation,
    perturbation: optax.GradientTransformation,
    *,
    opaque_mode: bool = True,
    batch_axis_name: str | None = None,
    mode: str = PER_REPLICA,
) -> optax.GradientTransformationExtraArgs:
    """Any ascent ``perturbation`` and base ``optimizer`` as one optimizer with ``optax.contrib.sam``'s protocol.

    The base optimizer steps from the unperturbed weights with the gradient taken at ``w + e``; the
    perturbation's state (F-SAM's EMA) is kept across steps and sees only clean gradients.

    Args:
        optimizer: the base optimizer, e.g. ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, 0.9))``
            (torch's SGD with ``weight_decay``) or ``optax.adamw(lr, weight_decay=wd)``.
        perturbation: maps the clean gradient to the ascent step ``e``, e.g. :func:`fsam_perturbation`.
        opaque_mode: ``True``: one ``update(g, state, params, grad_fn=grad_fn)`` per step, with
            ``grad_fn(params, i)`` the gradient at ``params``; the weights never move outside (exact, and
            BatchNorm-safe). ``False``: ``optax.contrib.sam``'s alternating calls (perturb, then update).
        batch_axis_name: the mapped axis of data parallelism, or ``None``.
        mode: ``"per-replica"`` or ``"synchronized"`` (see the module docstring); only with ``batch_axis_name``.

    Raises:
        ValueError: an unknown ``mode``; ``"per-replica"`` with ``opaque_mode=False`` (each replica would
            return to the shared weights through its own perturbed ones, rounding differently: the
            replicas would drift apart).
    """
    if mode not in MODES:
        raise ValueError(f"invalid mode={mode!r}: use 'per-replica' or 'synchronized'")
    adversary = optax.chain(perturbation, optax.scale(-1.0))  # optax.contrib.sam negates its adversary
    if batch_axis_name is not None:
        if mode == PER_REPLICA and not opaque_mode:
            raise ValueError(
                "mode='per-replica' needs opaque_mode=True: with alternating calls every replica returns to "
                "the shared weights from its own perturbed weights, which rounds differently per replica and "
                "lets the replicas drift apart. Use opaque_mode=True (one call with grad_fn) or mode='synchronized'"
            )
        if mode == SYNCHRONIZED:
            adversary = optax.chain(pmean_gradients(batch_axis_name), adversary)
        optimizer = optax.chain(pmean_gradients(batch_axis_name), optimizer)
    return optax.contrib.sam(optimizer, adversary, sync_period=2, reset_state=False, opaque_mode=opaque_mode)


class SharpnessAwareOptions(TypedDict, total=False):
    """The keywords :func:`sam` and :func:`fsam` share, all optional; each default is declared once, where the
    keyword goes (:func:`sam_perturbation` / :func:`fsam_perturbation` or :func:`two_pass`).

    Attributes:
        adaptive: ASAM's scale-invariant perturbation ``rho w^2 d / (||w d|| + eps)`` (default ``False``;
            needs ``params`` in ``update``).
        eps: the normalisation's epsilon (default ``NORM_EPS``, ``1e-12``).
        opaque_mode: ``True`` (default): one ``update(g, state, params, grad_fn=...)`` per step; ``False``:
            ``optax.contrib.sam``'s alternating calls (see :func:`two_pass`).
        batch_axis_name: the mapped axis of data parallelism (default ``None``).
        mode: ``"per-replica"`` (default) or ``"synchronized"``; only with ``batch_axis_name``.
    """

    adaptive: bool
    eps: float
    opaque_mode: bool
    batch_axis_name: str | None
    mode: str


_PERTURBATION_KEYWORDS = frozenset({"adaptive", "eps"})  # the rest go to two_pass


def _split_options(function: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as (the perturbation's keywords, :func:`two_pass`'s); an unknown one is a TypeError."""
    known = SharpnessAwareOptions.__optional_keys__
    if unknown := sorted(set(options) - known):
        raise TypeError(
            f"{function}() got unexpected keyword argument(s) {unknown}; its keywords are {sorted(known)}"
        )
    perturbation = {k: v for k, v in options.items() if k in _PERTURBATION_KEYWORDS}
    return perturbation, {k: v for k, v in options.items() if k not in _PERTURBATION_KEYWORDS}


def sam(
    optimizer: optax.GradientTransformation, rho: float = 0.05, **options: Unpack[SharpnessAwareOptions]
) -> optax.GradientTransformationExtraArgs:
    """SAM (``adaptive=True``: ASAM) over ``optimizer``: :func:`two_pass` of :func:`sam_perturbation`.

    ``options``: the keywords of :class:`SharpnessAwareOptions`.
    """
    perturbation_options, two_pass_options = _split_options("sam", options)
    return two_pass(optimizer, sam_perturbation(rho, **perturbation_options), **two_pass_options)


def fsam(
    optimizer: optax.GradientTransformation,
    rho: float = 0.05,
    sigma: float = 1.0,
    lmbda: float = 0.9,
    **options: Unpack[SharpnessAwareOptions],
) -> optax.GradientTransformationExtraArgs:
    """Friendly-SAM over ``optimizer``: :func:`two_pass` of :func:`fsam_perturbation`.

    Defaults are the official class defaults (``rho=0.05, sigma=1, lmbda=0.9``); the official CIFAR recipe
    is ``rho=0.2, sigma=1, lmbda=0.6``. ``sigma=0`` is SAM (with an unused EMA). ``friendly_state(state)``
    finds the EMA in the optimizer's state. ``options``: the keywords of :class:`SharpnessAwareOptions`.
    """
    perturbation_options, two_pass_options = _split_options("fsam", options)
    perturbation = fsam_perturbation(rho, sigma, lmbda, **perturbation_options)
    return two_pass(optimizer, perturbation, **two_pass_options)
