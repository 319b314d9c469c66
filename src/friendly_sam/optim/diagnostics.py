"""F-SAM's research diagnostics: how the minibatch gradient ``g`` relates to the full-gradient estimate ``m``.

Kept apart from the optimizer's update: the optimizer hands each step's direction ``d`` and estimate ``m``
(and, for ``component="full"``, its copy of ``g``) to :meth:`DirectionDiagnostics.observe` once the
direction's norm is known to be finite; nothing here changes a tensor the update uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tensor_ops import TensorOps

__all__ = ["DirectionDiagnostics"]

_F64 = torch.float64


def _dot(a: Tensor, b: Tensor) -> Tensor:
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return (a * b).sum()


def _sum_sq(ops: TensorOps, xs: list[Tensor]) -> Tensor:
    return torch.stack(ops.norms(xs)).to(_F64).square().sum()


class DirectionDiagnostics:
    """Running sums of ``cos(g, m)`` and of the noise/full norm ratio ``||g - sigma m|| / ||sigma m||``."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._steps = 0

    @staticmethod
    def bucket_sums(
        ops: TensorOps,
        component: str,
        sigma: float,
        dirs: list[Tensor],
        ests: list[Tensor],
        grads: list[Tensor],
    ) -> tuple[Tensor, ...]:
        """``(g.m, g.g, m.m, ||g - sigma m||^2, sigma^2 m.m)`` over one bucket, as float64 tensors (no sync).

        ``dirs`` are the directions, ``ests`` the estimates ``m``, ``grads`` the raw gradients ``g`` where the
        direction no longer holds them (``component="full"``), else ``dirs``. For the noise component
        ``d = g - sigma m``, so ``g`` is recovered from ``d`` and ``m`` and the noise norm is ``||d||`` itself
        (exact where the difference formula would cancel)."""
        dm = torch.stack([_dot(d, m) for d, m in zip(dirs if component == "noise" else grads, ests)]).to(_F64)
        dm, mm = dm.sum(), _sum_sq(ops, ests)
        if component == "noise":
            dd = _sum_sq(ops, dirs)
            gm, gg, noise = dm + sigma * mm, dd + 2.0 * sigma * dm + sigma * sigma * mm, dd
        else:
            gm, gg = dm, _sum_sq(ops, grads)
            noise = (gg - 2.0 * sigma * gm + sigma * sigma * mm).clamp_min(0.0)
        return gm, gg, mm, noise, sigma * sigma * mm

    def commit(self, parts: list[tuple[Tensor, ...]]) -> None:
        """Add one step (the :meth:`bucket_sums` of its buckets) to the running means."""
        if not parts:
            return
        dot, gg, mm, noise, smm = (torch.stack(t).sum() for t in zip(*parts))
        denom = (gg * mm).sqrt()
        cos = torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(denom))
        valid = smm > 0
        ratio = torch.where(valid, (noise / smm.clamp_min(1e-300)).sqrt(), torch.zeros_like(smm))
        for key, value in (("cos", cos), ("ratio", ratio), ("ratio_n", valid.to(_F64))):
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._steps += 1

    def read(self, reset: bool = True) -> dict[str, float | int | None]:
        """Means since the last reset (see :meth:`FriendlySAM.read_diagnostics`). One host sync."""
        steps = self._steps
        out: dict[str, float | int | None] = {"steps": steps, "cos_g_m": None, "noise_ratio": None}
        if steps:
            s = {k: float(v) for k, v in self._sums.items()}
            out["cos_g_m"] = s["cos"] / steps
            out["noise_ratio"] = s["ratio"] / s["ratio_n"] if s["ratio_n"] else None
        if reset:
            self._sums, self._steps = {}, 0
        return out
