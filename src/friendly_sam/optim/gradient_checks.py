"""The default mode's gradient checks (one host sync each): the perturbation scale a dtype cannot hold, the
perturbed gradient's finiteness, ``max_grad_norm`` clipping. A mixin of TwoPassOptimizer; the capturable
mode decides the same on the device (``capturable.py``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import functional as F
from .collectives import clip_sharded_
from .tensor_ops import FOREACH, PER_TENSOR

__all__ = ["GradientChecks"]


class GradientChecks:
    """Refusals of the default mode, before anything changes."""

    def _check_scales(self, buckets: list, total: float) -> None:
        """Refuse, before the weights change, a perturbation scale a parameter's dtype cannot hold (a huge
        rho): torch would raise part-way (a float alpha) or silently write inf (addcmul's value)."""
        for bucket, _ in buckets:
            scale = F.perturbation_scale(bucket.group["rho"], total)
            dtype = bucket.params[0].dtype
            if dtype.is_floating_point and scale > torch.finfo(dtype).max:
                raise FloatingPointError(
                    f"{type(self).__name__}.first_step: the perturbation scale rho / ||d|| = {scale:.3g} "
                    f"overflows {dtype} (rho={bucket.group['rho']!r}, ||d||={total:.3g}); weights and "
                    "optimizer state are unchanged. Use a smaller rho"
                )

    def _clip_and_check(self, scaler: torch.amp.GradScaler | None) -> None:
        """Clip the perturbed gradient to ``max_grad_norm``; without a scaler, refuse an inf/nan one (with a
        scaler, ``scaler.step`` detects it, skips the step and records the overflow). One norm serves both:
        one host sync per step without a scaler, none added with one."""
        params = [p for p in self._params() if p.grad is not None]
        grads = [p.grad for p in params]
        if self.max_grad_norm is None and scaler is not None:
            return
        if self.max_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(self.base_optimizer)
            total = self._clip(params, sync=scaler is None)
        else:
            plain = grads and self._use_foreach(grads) and not hasattr(grads[0], "to_local")
            ops = FOREACH if plain else PER_TENSOR
            total = self._global_norm(ops.norms(grads))
        if scaler is None and not math.isfinite(total):
            raise FloatingPointError(
                f"{type(self).__name__}.second_step: the perturbed gradient holds inf or nan (norm {total}); "
                "the weights are restored and the base optimizer did not step. The perturbed loss diverged: "
                "lower rho or the learning rate, or for fp16 pass the GradScaler to both steps"
            )

    def _clip(self, params: list[Tensor], sync: bool = True) -> float:
        """Clip the gradients of ``params`` to ``max_grad_norm``; their global norm before clipping (0.0
        unless ``sync``, to spare a host sync, or under sharding, where it is always known)."""
        assert self.max_grad_norm is not None
        params = [p for p in params if p.grad is not None]
        if self.process_group is None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=self.foreach)
            return float(norm) if sync else 0.0
        return clip_sharded_([p.grad for p in params], self.max_grad_norm, self.process_group)
