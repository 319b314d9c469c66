"""The algorithm once, as functions over lists of tensors (as ``torch.optim.sgd()`` sits under ``SGD``).

One sharpness-aware step, with ``g`` the clean gradient at ``w`` and ``||.||`` ONE global L2 norm over every
parameter of every group::

    d = g                                     SAM, ASAM
    d = g - sigma * m ;  m <- lmbda m + (1 - lmbda) g                     F-SAM   (noise_direction_, ema_)
    n = ||d||                      ASAM: d <- w d ; n = ||d||             (global_norm, asam_direction_)
    s = rho / (n + 1e-12)                                                 (perturbation_scale)
    w_saved <- w ;  w <- w + s d   ASAM: w <- w + s w d                   (perturb_)
    g' = grad L_B(w)                                     the second pass (the caller)
    w <- w_saved ;  w <- BaseStep(w, g')                                  (restore_, the base optimizer)

The EMA is written in terms of ``d`` so that ``g`` need not be kept: ``m <- (lmbda + (1 - lmbda) sigma) m +
(1 - lmbda) d`` (ema_ with ``decay`` and ``weight``). LookSAM's unperturbed steps (``perturb_every > 1``) reuse the
part of the perturbed gradient orthogonal to the clean one (looksam_component_, looksam_add_).

Every function takes a :class:`~friendly_sam.optim.tensor_ops.TensorOps` (``FOREACH`` or ``PER_TENSOR``: both
give bit-identical results) and works in place; none synchronises with the host. ``scale`` may be a Python
float (default mode) or a 0-dim tensor on the parameters' device (capturable mode, see ``capturable.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .tensor_ops import TensorList, TensorOps

__all__ = [
    "NORM_EPS",
    "asam_direction_",
    "ema_",
    "global_norm",
    "looksam_add_",
    "looksam_component_",
    "noise_direction_",
    "perturb_",
    "perturbation_scale",
    "restore_",
]

# Norm floor of the official implementation: a zero direction gives a zero perturbation, never nan.
NORM_EPS = 1e-12


def global_norm(norms: TensorList) -> Tensor:
    """One L2 norm from per-tensor norms, as a float64 0-dim tensor on the first norm's device (no sync)."""
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device, torch.float64) for n in norms]))


def noise_direction_(ops: TensorOps, dirs: TensorList, ests: TensorList, sigma: float) -> None:
    """F-SAM's direction: ``d <- g - sigma * m`` in the tensors holding ``g``."""
    if sigma != 0:
        ops.add_(dirs, ests, -sigma)


def ema_(ops: TensorOps, emas: TensorList, xs: TensorList, decay: float, weight: float) -> None:
    """``m <- decay * m + weight * x`` (F-SAM's EMA: ``decay = lmbda``, ``weight = 1 - lmbda``)."""
    if decay != 1.0:
        ops.scale_(emas, decay)
    ops.add_(emas, xs, weight)


def asam_direction_(ops: TensorOps, dirs: TensorList, params: TensorList) -> None:
    """ASAM: ``d <- w * d`` (its norm is the adaptive one; the perturbation is ``w * (w d)``)."""
    ops.mul_(dirs, params)


def perturbation_scale(rho: float, norm: float | Tensor) -> float | Tensor:
    """``rho / (||d|| + 1e-12)``: a float for a float norm, a tensor for a tensor norm."""
    return rho / (norm + NORM_EPS)


def perturb_(
    ops: TensorOps, params: TensorList, saved: TensorList, dirs: TensorList, scale: float, adaptive: bool
) -> None:
    """``w_saved <- w ; w <- w + scale * d`` (adaptive: ``w <- w + scale * w * d``)."""
    ops.copy_(saved, params)
    if adaptive:
        ops.addcmul_(params, params, dirs, scale)
    else:
        ops.add_(params, dirs, scale)


def restore_(ops: TensorOps, params: TensorList, saved: TensorList) -> None:
    """``w <- w_saved``, in place and bit-exact (references to the parameters stay valid)."""
    ops.copy_(params, saved)


def looksam_component_(pairs: list[tuple[Tensor, Tensor]]) -> bool:
    """LookSAM: for each ``(g_s, g)`` pair (perturbed, clean gradient) ``g <- g_s - (<g_s, g> / ||g||^2) g``,
    the part of ``g_s`` orthogonal to ``g``, written over ``g``. False (nothing written) when ``<g_s, g>`` or
    ``||g||^2`` is not finite or ``g = 0``. One host sync."""
    device = pairs[0][1].device
    sums = torch.stack(
        [torch.stack([(gs * g).sum(), (g * g).sum()]).to(device, torch.float64) for gs, g in pairs]
    ).sum(0)
    dot, gg = (float(x) for x in sums)
    if not (math.isfinite(dot) and math.isfinite(gg)) or gg == 0.0:
        return False
    for gs, g in pairs:
        g.mul_(-dot / gg).add_(gs)
    return True


def looksam_add_(
    ops: TensorOps, grads: TensorList, vs: TensorList, alpha: float, grad_norm: float, v_norm: float
):
    """LookSAM's gradient on an unperturbed step: ``g <- g + alpha * ||g|| / ||v|| * v`` (nothing when a norm is 0)."""
    if v_norm == 0.0 or grad_norm == 0.0:
        return
    ops.add_(grads, vs, alpha * grad_norm / v_norm)
