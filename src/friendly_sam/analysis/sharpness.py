r"""Worst-case (SAM) sharpness: the largest loss increase in a ball of radius rho.

.. math::  S_\rho(w) = \max_{\|T_w^{-1}\epsilon\|_2 \le \rho} L(w + \epsilon) - L(w),

with :math:`T_w = I` (SAM) or :math:`T_w = \operatorname{diag}|w|` (``adaptive=True``, ASAM's
scale-invariant ball). This is the quantity SAM minimises, evaluated for the *whole* set of
batches at once (one perturbation shared by all batches; SAM's training-time "m-sharpness" uses
one perturbation per m-example batch instead and is larger).

The maximisation is non-convex, so the result is a lower bound on :math:`S_\rho`: the best of the
points visited by projected normalised gradient ascent in the coordinates
:math:`u = T_w^{-1}\epsilon`,

.. math::  u_0 = 0, \qquad u_{k+1} = \Pi_\rho\Big(u_k + \rho\,
           \frac{T_w \nabla L(w + T_w u_k)}{\|T_w \nabla L(w + T_w u_k)\|}\Big),

where :math:`\Pi_\rho` projects onto the ball :math:`\|u\| \le \rho`. The first step is exactly
the SAM perturbation :math:`\epsilon_1 = \rho\,g/\|g\|` (ASAM: :math:`\rho\,w^2 g/\|w g\|`), so
the result is never below the loss increase along the SAM direction, and never below 0
(:math:`\epsilon = 0` is feasible).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._common import (
    Batch,
    BNMode,
    LossFn,
    ProgressFn,
    _loss_and_accuracy,
    _loss_and_grad,
    _measure_inputs,
    _norm,
    _perturbation,
    _Result,
    _WeightGuard,
)

__all__ = ["SharpnessResult", "worst_case_loss_increase"]


@dataclass
class SharpnessResult(_Result):
    """Result of :func:`worst_case_loss_increase` (JSON-serialisable through ``to_dict()``).

    ``history[k-1]`` is :math:`L(w+\\epsilon_k) - L(w)` after ascent step ``k``; ``sam_increase``
    is ``history[0]`` (the SAM perturbation); ``increase = max(0, *history)`` and ``worst_loss =
    loss + increase``; ``best_step`` is the step that reached it (0: none increased the loss).
    ``forward_backward_passes`` / ``forward_passes`` count passes over *all* the batches.
    """

    loss: float
    worst_loss: float
    increase: float
    sam_increase: float
    best_step: int
    rho: float
    steps: int
    adaptive: bool
    history: list[float] = field(default_factory=list)
    forward_backward_passes: int = 0
    forward_passes: int = 0
    bn_mode: str = "eval"


@torch.no_grad()
def _ascend_(u: list[torch.Tensor], gu: list[torch.Tensor], rho: float, gnorm: float) -> None:
    """``u <- u + rho * gu / gnorm``, then projected back onto the ball of radius ``rho``."""
    for ui, gi in zip(u, gu, strict=True):
        ui.add_(gi, alpha=rho / gnorm)
    unorm = _norm(u)
    if unorm > rho:
        for ui in u:
            ui.mul_(rho / unorm)


def _best(history: list[float]) -> tuple[int, float]:
    """The first ascent step with the largest positive increase, and that increase (``(0, 0.0)`` if none).

    A step whose loss was not finite makes the increase NaN: undefined, never a 0.0 that hides it."""
    if any(not math.isfinite(inc) for inc in history):
        return 0, math.nan
    best_step, increase = 0, 0.0
    for k, inc in enumerate(history, start=1):
        if inc > increase:
            best_step, increase = k, inc
    return best_step, increase


def worst_case_loss_increase(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    rho: float,
    steps: int = 5,
    adaptive: bool = False,
    progress: ProgressFn | None = None,
    bn_mode: BNMode = "eval",
) -> SharpnessResult:
    r"""Largest :math:`L(w+\epsilon) - L(w)` over :math:`\|T_w^{-1}\epsilon\| \le \rho` found by
    ``steps`` projected normalised gradient-ascent steps (see the module docstring for the math).

    **Cost**: ``steps`` forward+backward passes and one forward pass over all batches (the
    gradient at ``w``, the gradients at the first ``steps - 1`` perturbed points, and the loss at
    the last one). Stops early, with fewer passes, if a gradient vanishes.

    The trainable weights are saved before and copied back in place afterwards (also on error),
    so they are bit-identical after the call; ``.grad`` fields are not touched. ``progress`` is
    called after each pass with ``total = steps + 1``.
    """
    if not rho > 0:
        raise ValueError("rho must be > 0")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    report, params, data = _measure_inputs(model, batches, progress)
    with _perturbation(model, params, bn_mode) as guard:
        scale = [w0.abs() for w0 in guard.origin] if adaptive else None
        loss0, grad = _loss_and_grad(model, loss_fn, data, params)
        report(1, steps + 1, f"loss at w: {loss0:.6g}")
        history, fb, fwd = _ascend(model, loss_fn, data, params, guard, grad, loss0, scale, rho, steps, report)
    best_step, increase = _best(history)
    return SharpnessResult(
        loss=loss0,
        worst_loss=loss0 + increase,
        increase=increase,
        sam_increase=history[0] if history else 0.0,
        best_step=best_step,
        rho=float(rho),
        steps=steps,
        adaptive=adaptive,
        history=history,
        forward_backward_passes=fb,
        forward_passes=fwd,
        bn_mode=bn_mode,
    )


def _ascend(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    params: list[Tensor],
    guard: _WeightGuard,
    grad: list[Tensor],
    loss0: float,
    scale: list[Tensor] | None,
    rho: float,
    steps: int,
    report: Any,
) -> tuple[list[float], int, int]:
    """The ascent steps of :func:`worst_case_loss_increase`: (loss increases, forward+backward passes
    including the one at ``w``, forward-only passes)."""
    total = steps + 1
    history: list[float] = []
    fb, fwd = 1, 0
    u = [torch.zeros_like(p) for p in params]
    for k in range(1, steps + 1):
        gu = grad if scale is None else [g * s for g, s in zip(grad, scale, strict=True)]
        gnorm = _norm(gu)
        if gnorm == 0.0 or not math.isfinite(gnorm):
            if not math.isfinite(gnorm) or not math.isfinite(loss0):
                history.append(math.nan)  # the ascent is undefined: the result is NaN, not 0
            report(total, total, f"stopped after {k - 1} steps: gradient norm {gnorm}")
            break
        _ascend_(u, gu, rho, gnorm)
        guard.set_offset(u if scale is None else [ui * s for ui, s in zip(u, scale, strict=True)])
        if k < steps:
            loss, grad = _loss_and_grad(model, loss_fn, data, params)
            fb += 1
        else:
            loss, _ = _loss_and_accuracy(model, loss_fn, data)
            fwd += 1
        history.append(loss - loss0)
        report(k + 1, total, f"ascent step {k}/{steps}: loss increase {loss - loss0:.6g}")
    return history, fb, fwd
