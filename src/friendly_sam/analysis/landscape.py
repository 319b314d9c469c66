r"""Loss landscapes along filter-normalised random directions (Li et al., NeurIPS 2018).

A random direction :math:`d` has the shape of the trainable weights. Drawn from
:math:`\mathcal N(0, I)`, it is rescaled *per filter*: for every parameter tensor with at least
two dimensions (convolution kernels, linear weight matrices) and every index ``i`` of its first
dimension (an output channel / a row),

.. math::  d_i \leftarrow \frac{d_i}{\|d_i\|}\,\|w_i\| .

This removes the scale invariance of ReLU/BatchNorm networks (multiplying a filter by c and the
next layer by 1/c changes nothing), so that plots of different networks are comparable: a step
of 1 moves every filter by its own norm.

Parameters with at most one dimension (biases, BatchNorm/LayerNorm scales and shifts) get a zero
direction by default (``ignore_bias_bn=True``), as in Li et al.'s plots: they are few, and a
BatchNorm scale, perturbed by a random multiple of its own norm, could change sign and dominate
the picture. With ``ignore_bias_bn=False`` each such tensor is normalised as one filter.

The 1-D landscape is :math:`f(\alpha) = L(w + \alpha d)` on ``points`` equally spaced values of
:math:`\alpha \in [-\text{span}, \text{span}]`; the 2-D one is :math:`f(\alpha, \beta) =
L(w + \alpha d_1 + \beta d_2)` on a ``points x points`` grid (:math:`d_1, d_2` independent
draws, nearly orthogonal in high dimension). For an odd number of points the grid contains
:math:`\alpha = 0` exactly and the weights there are exactly ``w``, so the centre value equals the
loss at the weights bit for bit.

**Cost**: one forward pass over all batches per grid point, no backward pass: ``points`` for 1-D,
``points**2`` for 2-D. Top-1 accuracy is recorded for free when the model outputs class logits
(a 2-D tensor) and the targets are integer class labels; otherwise ``accuracies`` is None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..reporting import new_figure, save_figure
from ._common import (
    Batch,
    BNMode,
    LossFn,
    ProgressFn,
    _generator,
    _loss_and_accuracy,
    _measure_inputs,
    _perturbation,
    _Result,
    trainable_parameters,
)

__all__ = [
    "Landscape1D",
    "Landscape2D",
    "filter_normalized_direction",
    "loss_landscape_1d",
    "loss_landscape_2d",
    "plot_landscape_1d",
    "plot_landscape_2d",
]


def _direction(params: Sequence[Tensor], gen: torch.Generator, ignore_bias_bn: bool) -> list[Tensor]:
    out = []
    for p in params:
        # drawn in float64 on the CPU: the same seed gives the same direction on every device
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        w = p.detach().to(device="cpu", dtype=torch.float64)
        if p.dim() <= 1:
            if ignore_bias_bn:
                d.zero_()
            else:
                d.mul_(w.norm() / (d.norm() + 1e-10))
        else:
            dims = tuple(range(1, p.dim()))
            w_norm = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
            d_norm = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
            d.mul_(w_norm / (d_norm + 1e-10))
        out.append(d.to(device=p.device, dtype=p.dtype))
    return out


def filter_normalized_direction(model: nn.Module, seed: int = 0, ignore_bias_bn: bool = True) -> list[Tensor]:
    """One filter-normalised random direction (a list shaped like the trainable parameters).

    See the module docstring. ``loss_landscape_1d(..., seed=s)`` uses
    ``filter_normalized_direction(model, s)``; the 2-D landscape uses this draw and the next one
    from the same generator.
    """
    return _direction(trainable_parameters(model), _generator(seed), ignore_bias_bn)


def _grid(span: float, points: int) -> list[float]:
    if points < 1:
        raise ValueError("points must be >= 1")
    if points == 1:
        return [0.0]
    # integer numerators: the middle point of an odd grid is exactly 0.0
    return [span * (2 * i - (points - 1)) / (points - 1) for i in range(points)]


def _origin(params: Sequence[Tensor]) -> list[None]:
    """The offset of the weights themselves: written back bit for bit, not as ``w + 0 * d``."""
    return [None] * len(params)


def _losses_at(
    model: nn.Module,
    loss_fn: LossFn,
    data: Sequence[tuple[Any, Any, float]],
    params: Sequence[Tensor],
    bn_mode: BNMode,
    offsets: Iterable[tuple[str, Sequence[Tensor | None]]],
    total: int,
    report: ProgressFn,
) -> tuple[list[float], list[float] | None]:
    """Loss and top-1 accuracy at ``w + offset`` for each ``(label, offset)`` of ``offsets`` (one forward
    pass over all batches each, ``report`` after each); the weights are restored in place afterwards.
    The accuracies are None unless every point recorded one (the outputs are class logits)."""
    losses: list[float] = []
    accs: list[float | None] = []
    with _perturbation(model, params, bn_mode) as guard:
        for done, (label, offset) in enumerate(offsets, start=1):
            guard.set_offset(offset)
            loss, acc = _loss_and_accuracy(model, loss_fn, data)
            losses.append(loss)
            accs.append(acc)
            report(done, total, f"{label}: loss {loss:.6g}")
    return losses, None if any(a is None for a in accs) else accs  # type: ignore[return-value]


@dataclass
class Landscape1D(_Result):
    """``losses[i]`` (and ``accuracies[i]``, or None) at ``alphas[i]``; JSON-ready via ``to_dict()``."""

    alphas: list[float]
    losses: list[float]
    accuracies: list[float] | None = None
    span: float = 1.0
    seed: int = 0
    ignore_bias_bn: bool = True
    forward_passes: int = 0
    bn_mode: str = "eval"


@dataclass
class Landscape2D(_Result):
    """``losses[i][j]`` at ``(alphas[i], betas[j])`` (first index: direction 1); JSON-ready."""

    alphas: list[float]
    betas: list[float]
    losses: list[list[float]] = field(default_factory=list)
    accuracies: list[list[float]] | None = None
    span: float = 1.0
    seed: int = 0
    ignore_bias_bn: bool = True
    forward_passes: int = 0
    bn_mode: str = "eval"


def loss_landscape_1d(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    span: float = 1.0,
    points: int = 21,
    seed: int = 0,
    progress: ProgressFn | None = None,
    bn_mode: BNMode = "eval",
    ignore_bias_bn: bool = True,
) -> Landscape1D:
    r""":math:`L(w + \alpha d)` for ``points`` values of :math:`\alpha` in ``[-span, span]``.

    **Cost**: ``points`` forward passes over all batches. Weights are restored bit-exactly (in
    place) before returning, also on error. ``progress`` is called after each point.
    """
    alphas = _grid(span, points)
    report, params, data = _measure_inputs(model, batches, progress)
    d = _direction(params, _generator(seed), ignore_bias_bn)
    offsets = ((f"alpha={a:+.3g}", _origin(params) if a == 0.0 else [a * t for t in d]) for a in alphas)
    losses, accs = _losses_at(model, loss_fn, data, params, bn_mode, offsets, len(alphas), report)
    return Landscape1D(
        alphas=alphas,
        losses=losses,
        accuracies=accs,
        span=float(span),
        seed=seed,
        ignore_bias_bn=ignore_bias_bn,
        forward_passes=len(alphas),
        bn_mode=bn_mode,
    )


def loss_landscape_2d(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    span: float = 1.0,
    points: int = 11,
    seed: int = 0,
    progress: ProgressFn | None = None,
    bn_mode: BNMode = "eval",
    ignore_bias_bn: bool = True,
) -> Landscape2D:
    r""":math:`L(w + \alpha d_1 + \beta d_2)` on a ``points x points`` grid over ``[-span, span]^2``.

    **Cost**: ``points**2`` forward passes over all batches (121 for the default 11). Weights are
    restored bit-exactly (in place) before returning, also on error. ``progress`` is called after
    each grid point with ``total = points**2``.
    """
    coords = _grid(span, points)
    report, params, data = _measure_inputs(model, batches, progress)
    gen = _generator(seed)
    d1 = _direction(params, gen, ignore_bias_bn)
    d2 = _direction(params, gen, ignore_bias_bn)
    offsets = (
        (
            f"alpha={a:+.3g}, beta={b:+.3g}",
            _origin(params) if a == 0.0 and b == 0.0 else [a * x + b * y for x, y in zip(d1, d2, strict=True)],
        )
        for a in coords
        for b in coords
    )
    n = len(coords)
    losses, accs = _losses_at(model, loss_fn, data, params, bn_mode, offsets, n * n, report)
    return Landscape2D(
        alphas=coords,
        betas=list(coords),
        losses=[losses[i * n : (i + 1) * n] for i in range(n)],
        accuracies=None if accs is None else [accs[i * n : (i + 1) * n] for i in range(n)],
        span=float(span),
        seed=seed,
        ignore_bias_bn=ignore_bias_bn,
        forward_passes=n * n,
        bn_mode=bn_mode,
    )


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib is an optional dependency: imported only here, Agg canvas, no pyplot, so
# the global backend of the calling program is left alone).


def _figure(figsize: tuple[float, float]) -> Any:
    return new_figure("plotting a loss landscape", figsize=figsize)


def _get(result: Any, key: str) -> Any:
    return result[key] if isinstance(result, Mapping) else getattr(result, key)


def plot_landscape_1d(
    result: Landscape1D | Mapping[str, Any], path: str | PathLike[str], title: str | None = None
) -> Path:
    """Write a PNG of a 1-D landscape (a :class:`Landscape1D` or its ``to_dict()``/JSON form).

    Loss on the left axis; top-1 accuracy on a right axis when recorded. Returns the path.
    """
    import numpy as np

    alphas = np.asarray(_get(result, "alphas"), dtype=float)
    losses = np.asarray(_get(result, "losses"), dtype=float)
    accs = _get(result, "accuracies")
    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(alphas, losses, "o-", color="tab:blue", markersize=3, label="loss")
    ax.axvline(0.0, color="0.7", linewidth=0.8, zorder=0)
    ax.set_xlabel("alpha (filter-normalised direction)")
    ax.set_ylabel("loss", color="tab:blue")
    if accs is not None:
        ax2 = ax.twinx()
        ax2.plot(alphas, 100.0 * np.asarray(accs, dtype=float), "s--", color="tab:red", markersize=3)
        ax2.set_ylabel("accuracy (%)", color="tab:red")
    ax.set_title(title or "1-D loss landscape")
    return save_figure(fig, path)  # through the file layer: atomic, never through a link


def plot_landscape_2d(
    result: Landscape2D | Mapping[str, Any],
    path: str | PathLike[str],
    title: str | None = None,
    levels: int = 30,
    log_scale: bool = False,
) -> Path:
    """Write a PNG contour plot of a 2-D landscape (a :class:`Landscape2D` or its dict form).

    ``log_scale`` colours by ``log10(loss)`` (useful when the edges are orders of magnitude above
    the centre; requires positive losses). Non-finite losses are left blank. Returns the path.
    """
    import numpy as np

    alphas = np.asarray(_get(result, "alphas"), dtype=float)
    betas = np.asarray(_get(result, "betas"), dtype=float)
    z = np.asarray(_get(result, "losses"), dtype=float)  # z[i, j] at (alphas[i], betas[j])
    if z.shape != (alphas.size, betas.size):
        raise ValueError(f"losses has shape {z.shape}, expected {(alphas.size, betas.size)}")
    label = "loss"
    if log_scale:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(z), np.nan)
        label = "log10(loss)"
    zm = np.ma.masked_invalid(z.T)  # rows of the image are beta, columns alpha
    fig = _figure((5.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    if alphas.size > 1 and betas.size > 1 and zm.count() > 0:
        cs = ax.contourf(alphas, betas, zm, levels=levels, cmap="viridis")
        ax.contour(alphas, betas, zm, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
        fig.colorbar(cs, ax=ax, label=label)
    ax.plot([0.0], [0.0], "r+", markersize=10)
    ax.set_xlabel("alpha (direction 1)")
    ax.set_ylabel("beta (direction 2)")
    ax.set_aspect("equal", adjustable="box")
    ax.locator_params(nbins=5)
    ax.set_title(title or "2-D loss landscape")
    return save_figure(fig, path)  # through the file layer: atomic, never through a link
