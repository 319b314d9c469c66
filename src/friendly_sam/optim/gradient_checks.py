"""The default mode's gradient checks: the clean gradient's and the perturbed gradient's finiteness, the
perturbation scale a dtype cannot hold, ``max_grad_norm`` clipping. A mixin of TwoPassOptimizer.

Where they are read: on CPU each as it arises (first_step reads the clean norm, second_step the perturbed
one: plain memory reads there); on an accelerator first_step decides on the device as the capturable mode
does (``capturable.py``) and :meth:`GradientChecks._checked_base_step` reads every check of the step at
once: one host synchronisation per step. The errors are the same either way (one wording, below)."""

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

    def _clean_gradient_error(self, total: float) -> FloatingPointError:
        return FloatingPointError(
            f"{type(self).__name__}.first_step: the clean gradient holds inf or nan (norm {total}); "
            "weights and optimizer state are unchanged. Check the loss for inf/nan, lower the learning "
            "rate, or for fp16 pass the GradScaler: first_step(scaler=...), second_step(scaler=...)"
        )

    def _perturbed_gradient_error(self, total: float) -> FloatingPointError:
        return FloatingPointError(
            f"{type(self).__name__}.second_step: the perturbed gradient holds inf or nan (norm {total}); "
            "the weights are restored and the base optimizer did not step. The perturbed loss diverged: "
            "lower rho or the learning rate, or for fp16 pass the GradScaler to both steps"
        )

    def _checked_base_step(self, scaler: torch.amp.GradScaler | None) -> None:
        """Default mode on an accelerator, after the restore: clip, then read the step's checks in ONE host
        sync (the clean direction's, decided on the device by first_step, and the perturbed gradient's), then
        raise as the CPU path would, skip (a GradScaler's overflow: ``scaler.update()`` lowers the scale), or
        take the base step. The perturbation of an unusable clean gradient was zero (capturable.py), so the
        second pass ran at the unperturbed weights and F-SAM's estimate was not updated."""
        clean_ok, clean_norm = self._run.ok, self._run.norm
        self._run.ok = self._run.norm = None
        total = self._perturbed_norm([p for p in self._params() if p.grad is not None], scaler)
        bad = (~clean_ok).to(torch.int64) + 2 * (~torch.isfinite(total)).to(torch.int64)
        code = int(bad)  # the step's one host synchronisation
        if code and scaler is not None:
            return
        if code & 1:
            norm = float(clean_norm)  # the error path: a second read costs nothing that matters
            if math.isfinite(norm):
                self._check_scales(self._buckets(), norm)
            raise self._clean_gradient_error(norm)
        if code & 2:
            raise self._perturbed_gradient_error(float(total))
        self.base_optimizer.step()

    def _norms(self, grads: list[Tensor]) -> list[Tensor]:
        plain = grads and self._use_foreach(grads) and not hasattr(grads[0], "to_local")
        return (FOREACH if plain else PER_TENSOR).norms(grads)

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
            total = self._global_norm(self._norms(grads))
        if scaler is None and not math.isfinite(total):
            raise self._perturbed_gradient_error(total)

    def _clip(self, params: list[Tensor], sync: bool = True) -> float:
        """Clip the gradients of ``params`` to ``max_grad_norm``; their global norm before clipping (0.0
        unless ``sync``, to spare a host sync, or under sharding, where it is always known)."""
        assert self.max_grad_norm is not None
        params = [p for p in params if p.grad is not None]
        if self.process_group is None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=self.foreach)
            return float(norm) if sync else 0.0
        return clip_sharded_([p.grad for p in params], self.max_grad_norm, self.process_group)
