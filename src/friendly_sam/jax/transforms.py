"""F-SAM's building blocks as optax gradient transformations, each small and composable.

* :func:`friendly_direction` turns the clean minibatch gradient ``g`` into F-SAM's direction
  ``d = g - sigma * m`` and keeps the EMA ``m`` of past clean gradients in its state (the official
  ordering: the direction uses ``m`` *before* its update; the first step is plain SAM, ``m = g``).
* :func:`normalize` scales a direction to unit global norm, epsilon-safe: ``d / (||d|| + eps)``;
  ``adaptive=True`` gives ASAM's ``w^2 d / (||w d|| + eps)``. One L2 norm over the whole pytree.
* :func:`pmean_gradients` averages gradients over a mapped axis (``pmap`` / ``shard_map`` / ``vmap``).

Chained with ``optax.scale(rho)`` they give the perturbation ``e`` (an *ascent* step: ``w + e``); see
``friendly_sam.jax.optimizers`` for the ready chains and the two-pass optimizers built on them.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "NORM_EPS",
    "FriendlyDirectionState",
    "check_hyperparameter",
    "friendly_direction",
    "friendly_state",
    "global_norm",
    "normalize",
    "pmean_gradients",
]

# The norm floor of the official code: a zero direction gives a zero perturbation, never nan.
NORM_EPS = 1e-12


def check_hyperparameter(name: str, value: Any, *, low: float, high: float | None = None) -> float:
    """``value`` as a float if it is a finite real number in ``[low, high)``, else a ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and value >= low and (high is None or value < high)):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"invalid {name}={value!r}: it must be a finite number {bound}")
    return float(value)


class FriendlyDirectionState(NamedTuple):
    """State of :func:`friendly_direction`.

    Attributes:
        count: clean gradients averaged into ``ema`` so far (int32; 0: no estimate yet).
        ema: ``m``, the exponential moving average of the clean gradients (F-SAM's full-gradient
            estimate), shaped like the parameters.
    """

    count: jax.Array
    ema: optax.Updates


def friendly_state(state: optax.OptState) -> FriendlyDirectionState:
    """The one :class:`FriendlyDirectionState` inside an optimizer state (of :func:`fsam`, a chain, ...)."""
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, FriendlyDirectionState))
        if isinstance(s, FriendlyDirectionState)
    ]
    if len(found) != 1:
        raise ValueError(f"expected one FriendlyDirectionState in the optimizer state, found {len(found)}")
    return found[0]


def friendly_direction(sigma: float = 1.0, lmbda: float = 0.9) -> optax.GradientTransformation:
    """F-SAM's perturbation direction: the clean gradient minus ``sigma`` times its EMA.

    Per step, with ``g`` the raw clean minibatch gradient (before weight decay)::

        first step:  d = g ;  m = g                        (no estimate yet: a plain SAM step)
        later:       d = g - sigma * m ;  m = lmbda * m + (1 - lmbda) * g

    the order of the official code, which produced the published results (the paper's equations update
    ``m`` first; for ``sigma = 1`` both give the same direction after normalisation). ``sigma = 0`` is SAM.
    A clean gradient holding inf/nan (or so large that the direction's global norm overflows) leaves the
    state as it was: the EMA is never poisoned. Its direction is returned as computed, so the step shows
    the inf/nan (``optax.apply_if_finite`` skips such steps).

    Args:
        sigma: how much of the estimated full gradient to remove, >= 0 (1: all; 0: SAM).
        lmbda: EMA decay in [0, 1) (official recipe 0.6; class default of the official code 0.9).

    Returns:
        An ``optax.GradientTransformation`` whose state is :class:`FriendlyDirectionState`.
    """
    sigma = check_hyperparameter("sigma", sigma, low=0.0)
    lmbda = check_hyperparameter("lmbda", lmbda, low=0.0, high=1.0)

    def init_fn(params: optax.Params) -> FriendlyDirectionState:
        return FriendlyDirectionState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update_fn(
        updates: optax.Updates, state: FriendlyDirectionState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, FriendlyDirectionState]:
        del params
        # Scalar coefficients instead of per-element branches (one fused pass): on the first step the EMA
        # is zeros, so g - 0 * m = g and 0 * m + 1 * g = g exactly.
        first = state.count == 0
        c_sigma = jnp.where(first, 0.0, sigma)
        c_m, c_g = jnp.where(first, 0.0, lmbda), jnp.where(first, 1.0, 1.0 - lmbda)
        direction = jax.tree.map(lambda g, m: g - (c_sigma * m).astype(g.dtype), updates, state.ema)
        # d is finite iff g is (m always is); its global norm is the one normalize() takes next, so
        # XLA computes it once for both.
        finite = jnp.isfinite(global_norm(direction))
        ema = jax.tree.map(
            lambda g, m: jnp.where(finite, (c_m * m + c_g * g).astype(m.dtype), m), updates, state.ema
        )
        new_state = FriendlyDirectionState(
            jnp.where(finite, optax.safe_increment(state.count), state.count), ema
        )
        return direction, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def global_norm(tree: optax.Updates) -> jax.Array:
    """One L2 norm over every leaf of ``tree``, accumulated in at least float32 (bf16/fp16 leaves)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros([], jnp.float32)
    dtype = jnp.result_type(jnp.float32, *leaves)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(dtype))) for x in leaves))


def normalize(eps: float = NORM_EPS, *, adaptive: bool = False) -> optax.GradientTransformation:
    """Scale a direction to (just under) unit global norm: ``d / (||d|| + eps)``.

    Unlike ``optax.contrib.normalize`` (``d / ||d||``), a zero direction gives zero, never nan.
    ``adaptive=True`` is ASAM's weight-scaled neighbourhood: ``w^2 d / (||w d|| + eps)``, with ``w`` the
    ``params`` given to ``update`` (required then). One norm over the whole pytree, as in the official code.
    """
    eps = check_hyperparameter("eps", eps, low=0.0)
    if not isinstance(adaptive, bool):
        raise ValueError(f"invalid adaptive={adaptive!r}: it must be True or False")

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        if adaptive:
            if params is None:
                raise ValueError(
                    "normalize(adaptive=True) needs the parameters: call update(d, state, params)"
                )
            updates = jax.tree.map(lambda d, w: w * d, updates, params)  # norm of w * d ...
        norm = global_norm(updates)
        if adaptive:
            updates = jax.tree.map(lambda wd, w: w * wd, updates, params)  # ... direction w^2 d
        return jax.tree.map(lambda d: (d / (norm + eps)).astype(d.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def pmean_gradients(axis_name: str) -> optax.GradientTransformation:
    """Average the updates over the mapped axis ``axis_name`` (``jax.lax.pmean``); stateless.

    Use it inside ``pmap`` / ``shard_map`` (or ``vmap`` with an ``axis_name``) where each replica holds
    the gradient of its own part of the batch.
    """

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params
        return jax.lax.pmean(updates, axis_name=axis_name), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)
