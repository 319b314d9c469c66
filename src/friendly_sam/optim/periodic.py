"""The efficient variants' schedule: perturb only every k-th step (``perturb_every``) and, on the steps between,
a plain base step (``between="base"``) or LookSAM's reuse of the last measured sharpness component
(``between="looksam"``; Liu et al., CVPR 2022). See ``docs/efficient.md``.

Only every k-th step (steps 0, k, 2k, ... of the optimizer's own counter) is a perturbed two-pass step. On the
other steps ``first_step`` applies the base step itself on the clean gradient (plus, for LookSAM, the stored
component) and leaves ``is_perturbed`` False: the loop skips the second pass and still calls
``second_step``, which then only finishes the step. A loop that runs the second pass anyway stays correct
(the gradient of that pass is ignored), only slower.

A mixin of :class:`~friendly_sam.optim.two_pass.TwoPassOptimizer`: it reads the optimizer's buckets, norm,
clipping and base optimizer, and keeps the schedule's own state (the step counter, LookSAM's buffers).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import functional as F

__all__ = ["BETWEEN_MODES", "PeriodicSteps"]

# What the optimizer does on the steps between perturbed ones (perturb_every > 1).
BETWEEN_MODES = ("base", "looksam")


class PeriodicSteps:
    """``perturb_every`` / ``between`` / ``looksam_alpha`` and the unperturbed step."""

    state: Any
    base_optimizer: Any
    max_grad_norm: float | None

    def _init_periodic(self, perturb_every: int, between: str, looksam_alpha: float) -> None:
        self.perturb_every, self.between, self.looksam_alpha = perturb_every, between, float(looksam_alpha)

    @property
    def next_step_perturbs(self) -> bool:
        """Whether the next ``first_step`` perturbs (step ``t`` perturbs when ``t % perturb_every == 0``, ``t``
        counting finished steps from 0). Loops that prepare the clean pass differently for the two kinds
        (sub-batch ascent, per-replica DDP's ``no_sync``) read it before the clean pass."""
        return self.perturb_every == 1 or self._run.steps % self.perturb_every == 0  # (no guard on steps)

    @property
    def steps_taken(self) -> int:
        """Full steps finished (each first_step/second_step pair; part of ``state_dict()``)."""
        return self._run.steps

    @torch.no_grad()
    def _unperturbed_step(self, buckets: list, zero_grad: bool, skip: bool) -> None:
        """The base step on the clean gradient (+ the LookSAM component), taken inside first_step().
        ``skip``: a GradScaler unscaled the gradient, so an inf/nan skips the step (recorded) instead of
        raising."""
        norms = [n for bucket, ops in buckets for n in ops.norms(bucket.grads)]
        total = self._global_norm(norms)
        if not math.isfinite(total):
            if not skip:
                raise FloatingPointError(
                    f"{type(self).__name__}.first_step (unperturbed step): the clean gradient holds inf or "
                    f"nan (norm {total}); weights and optimizer state are unchanged. Check the loss, lower "
                    "the learning rate, or for fp16 pass the GradScaler to both steps"
                )
        else:
            for bucket, ops in buckets:
                self._observe_(bucket, ops, bucket.grads)
            if self.between == "looksam":
                self._looksam_add(buckets, total)
            if self.max_grad_norm is not None:
                self._clip([p for bucket, _ in buckets for p in bucket.params])
            self.base_optimizer.step()  # gradients already unscaled (first_step's scaler)
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def _observe_(self, bucket: Any, ops: Any, grads: list[Tensor]) -> None:
        """What the method learns from the clean gradient of an unperturbed step (F-SAM: its EMA). Must not
        modify ``grads``. Nothing by default."""

    # ----------------------------------------------------------------- LookSAM
    def _looksam_keep_clean(self, buckets: list) -> None:
        """A perturbed step of LookSAM: keep the clean gradient; second_step measures the component on it."""
        if self.between != "looksam":
            return
        for bucket, ops in buckets:
            ops.copy_([self._looksam_buffer(p) for p in bucket.params], bucket.grads)
        self._run.component_valid = False

    def _looksam_add(self, buckets: list, grad_norm: float) -> None:
        """LookSAM: ``g <- g + alpha * ||g|| / ||v|| * v`` with ``v`` the stored sharpness component."""
        if not self._run.component_valid:
            return  # none measured yet (or the last measurement overflowed): a plain base step
        parts = []
        for bucket, ops in buckets:
            kept = [
                (g, self.state[p]["looksam"])
                for p, g in zip(bucket.params, bucket.grads)
                if "looksam" in self.state[p]
            ]
            parts.append(([g for g, _ in kept], [v for _, v in kept], ops))
        v_norm = self._global_norm([n for _, vs, ops in parts for n in ops.norms(vs)])
        for grads, vs, ops in parts:
            F.looksam_add_(ops, grads, vs, self.looksam_alpha, grad_norm, v_norm)

    @torch.no_grad()
    def _looksam_measure(self) -> None:
        """LookSAM, in second_step before the weights are restored: ``v <- g_s - (<g_s, g> / ||g||^2) g``, the
        part of the perturbed gradient ``g_s`` orthogonal to the clean ``g``, written over the buffer holding
        ``g``. The unperturbed steps use only its direction, so an unscaled (GradScaler) ``g_s`` gives the same result;
        an inf/nan one leaves no component (the next unperturbed steps are plain base steps)."""
        if self.between != "looksam":
            return
        pairs = [
            (p.grad, self.state[p]["looksam"])
            for p in self._params()
            if p.grad is not None and "looksam" in self.state[p]
        ]
        if pairs and F.looksam_component_(pairs):
            self._run.component_valid = True

    def _looksam_buffer(self, p: Tensor) -> Tensor:
        buf = self.state[p].get("looksam")
        if buf is None:
            buf = self.state[p]["looksam"] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buf
