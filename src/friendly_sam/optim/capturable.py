"""``capturable=True``: a two-pass step with no host synchronisation (torch's name, as in Adam/AdamW).

The default mode turns the global norm into a Python float to choose between perturbing, skipping and
raising. Here every decision is made on the device, so the step can run under ``torch.compile(fullgraph=True)``
and inside a CUDA graph:

* the scale ``rho / (||d|| + 1e-12)`` stays a 0-dim tensor; ``ok = isfinite(||d||)`` (and, in the second
  step, ``isfinite(||g'||)``) is a boolean tensor;
* a step whose clean or perturbed gradient holds inf/nan (fp16 overflow with a GradScaler, or a diverging
  loss without one) is **skipped** instead of raising FloatingPointError: the direction is zeroed
  (``masked_fill_``), so F-SAM's EMA and the weights do not move; the base step runs on the perturbed gradient
  as it is, and ``torch.where(ok, new, old, out=...)`` puts back the weights (against the saved copy) and the
  base optimizer's tensor state (against a copy taken before its step): exact whatever inf/nan the skipped
  step computed. ``skipped_steps`` (an int64 device tensor) counts it. Read it when convenient:
  ``int(opt.skipped_steps)`` is one sync, yours to place;
* with a GradScaler, both gradients are unscaled with ``scaler.unscale_`` (which records overflows on the
  device) and the base step is taken directly, never through ``scaler.step`` (which syncs); call
  ``scaler.update()`` as usual: it lowers the scale after an overflow without a sync;
* a whole train step (both backward passes and both steps) compiles as one ``fullgraph=True`` graph for the
  bases whose update ``base_update.py`` takes through torch's functional form (SGD, Adam, AdamW): their state
  is created at construction where that is exact; other bases compile ``first_step`` / ``second_step`` one by
  one (docs/gpu.md).

Limits (refused at construction or at the step): ``perturb_every > 1`` and LookSAM (the schedule is host
state), sharded ``process_group`` / ``replica_group`` (collectives decide on the host), F-SAM's research
options (``component="full"``, the oracle full gradient, diagnostics). The base optimizer must itself be
sync-free to capture a CUDA graph (SGD; Adam/AdamW with ``capturable=True``). A skipped very first step is no
step for SGD/Adam/AdamW (their state, created as zeros, is put back); a base whose state torch creates at the
step it sees (SGD with ``dampening != 0``, other optimizers) gets a zeroed gradient on a skipped step while
that state does not exist, so it starts as for a zero gradient. ``steps_taken`` counts Python calls: under CUDA-graph
replay it does not advance.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from . import functional as F
from .base_update import functional_step, init_state_, is_compiling, state_ready, supports_functional
from .tensor_ops import PER_TENSOR

__all__ = ["CapturableSteps", "check_capturable"]


def check_capturable(
    name: str, perturb_every: int, between: str, process_group: Any, replica_group: Any
) -> None:
    """Refuse the options whose decisions live on the host."""
    if perturb_every != 1 or between != "base":
        raise ValueError(
            f"{name}(capturable=True) does not support perturb_every > 1 or between='looksam' (the schedule is "
            "decided on the host); use capturable=False for the efficient variants"
        )
    if process_group is not None or replica_group is not None:
        raise ValueError(
            f"{name}(capturable=True) does not support process_group / replica_group (their collectives decide "
            "on the host); use capturable=False under sharding or per-replica fp16"
        )


def _zero_out_(dirs: list[Tensor], ok: Tensor) -> None:
    """``d <- d`` where the step is ok, else ``d <- 0`` (also where d held inf/nan): no sync, exact. When ok,
    every element is finite (the norm is); ``masked_fill_`` with the 0-dim mask is one pass, no temporary."""
    skip = ~ok
    for d in dirs:
        d.masked_fill_(skip, 0.0)


def _add_scaled_(params: list[Tensor], dirs: list[Tensor], scale: Tensor, foreach: bool) -> None:
    """``w <- w + scale * d`` with a 0-dim tensor ``scale``, leaving ``d`` as it is (one pass per tensor:
    ``addcmul_`` computes it as the default mode's ``add_(d, alpha=scale)`` does)."""
    if foreach:
        torch._foreach_add_(params, torch._foreach_mul(dirs, scale))
    else:
        for p, d in zip(params, dirs):
            p.addcmul_(d, scale)


def _scales_fit(buckets: list, total: Tensor) -> Tensor:
    """Whether every bucket's scale ``rho / (||d|| + 1e-12)`` fits its dtype (a huge rho over a tiny norm
    would write inf into the perturbed weights): a bool tensor, no sync."""
    fits = torch.ones((), dtype=torch.bool, device=total.device)
    for bucket, _ in buckets:
        dtype = bucket.params[0].dtype
        if dtype.is_floating_point:
            fits = fits & (F.perturbation_scale(bucket.group["rho"], total) <= torch.finfo(dtype).max)
    return fits


def _base_step(base: torch.optim.Optimizer) -> None:
    """``base.step()``. Under torch.compile: SGD/Adam/AdamW through their functional form once their state
    exists (base_update.py: dynamo refuses torch's ``_init_group`` after an in-graph backward), else the
    undecorated body of ``step`` (torch's optimizers break the graph on purpose around it, which
    ``fullgraph=True`` refuses; compiled on its own, ``second_step`` traces it). We are already under
    ``no_grad``; the base optimizer's own step hooks are not run there (ours run, once per step)."""
    if not is_compiling():
        base.step()
    elif supports_functional(base) and state_ready(base):
        functional_step(base)
    else:
        inspect.unwrap(type(base).step)(base)


class CapturableSteps:
    """The sync-free first and second step (a mixin of TwoPassOptimizer)."""

    def _init_capturable(self, capturable: bool) -> None:
        self.capturable = bool(capturable)
        self.skipped_steps: Tensor | None = None  # allocated with the first parameter (device)

    def _capturable_buffers(self, params: list[Tensor]) -> None:
        if self.capturable and self.skipped_steps is None and params:
            self.skipped_steps = torch.zeros((), dtype=torch.int64, device=params[0].device)
            init_state_(self.base_optimizer)

    def _device_norm(self, norms: list[Tensor], like: Tensor) -> Tensor:
        return F.global_norm(norms) if norms else torch.zeros((), dtype=torch.float64, device=like.device)

    def _capturable_perturb(self, buckets: list, directions: list[list[Tensor]], contexts: list[Any]) -> None:
        """First step, after the direction: norm, mask, state update, perturbation; all on the device."""
        like = self._params()[0]
        total = self._device_norm(
            [n for (_, ops), ds in zip(buckets, directions) for n in ops.norms(ds)], like
        )
        ok = torch.isfinite(total) & _scales_fit(buckets, total)
        for dirs in directions:
            _zero_out_(dirs, ok)
        self._run.state_mask = ok  # F-SAM's EMA update reads it: no update on a skipped step
        try:
            for (bucket, ops), dirs, context in zip(buckets, directions, contexts):
                self._update_state_(bucket, ops, dirs, context)
        finally:
            self._run.state_mask = None
        if any(bucket.group["adaptive"] for bucket, _ in buckets):
            norms = []
            for (bucket, ops), dirs in zip(buckets, directions):
                if bucket.group["adaptive"]:
                    F.asam_direction_(ops, dirs, bucket.params)
                norms.extend(ops.norms(dirs))
            total = self._device_norm(norms, like)
            ok = ok & torch.isfinite(total) & _scales_fit(buckets, total)
            for dirs in directions:
                _zero_out_(dirs, ok)
        for (bucket, ops), dirs in zip(buckets, directions):
            scale = torch.where(ok, F.perturbation_scale(bucket.group["rho"], total), total.new_zeros(()))
            ops.copy_(bucket.saved, bucket.params)
            if bucket.group["adaptive"]:
                ops.scale_(dirs, scale)
                ops.addcmul_(bucket.params, bucket.params, dirs, 1.0)
            else:
                _add_scaled_(bucket.params, dirs, scale, ops is not PER_TENSOR)
        self._run.ok, self._run.norm = ok, total

    def _capturable_base_step(self, scaler: torch.amp.GradScaler | None) -> None:
        """Second step, after the restore: check (and clip) the perturbed gradient, then the base step,
        undone on the device when the step is not ok."""
        params = [p for p in self._params() if p.grad is not None]
        grads = [p.grad for p in params]
        ok = (
            self._run.ok
            if self._run.ok is not None
            else torch.ones((), dtype=torch.bool, device=self.skipped_steps.device)
        )
        self._run.ok = None
        # not ok: the base step may see inf/nan; torch.where below puts everything back exactly
        ok = ok & torch.isfinite(self._perturbed_norm(params, scaler))
        base = self.base_optimizer
        if not is_compiling():
            init_state_(base)  # the state a compiled step needs, created eagerly where exact (base_update.py)
        if any(not base.state.get(p) for p in params):
            # state this step may create is not put back below: let it see a zero gradient when skipped
            _zero_out_(grads, ok)
        state = [t for p in params for t in base.state[p].values() if torch.is_tensor(t)]
        before = [t.clone() for t in state]
        _base_step(base)
        for t, old in zip(state, before):
            torch.where(ok, t, old, out=t)
        for p in params:  # the saved weights are the weights before the base step (restored above)
            torch.where(ok, p, self._saved[p], out=p)
        self.skipped_steps.add_((~ok).to(torch.int64))

    def _perturbed_norm(self, params: list[Tensor], scaler: torch.amp.GradScaler | None) -> Tensor:
        """Second step, on the device: unscale the perturbed gradient (a GradScaler records an overflow for
        ``scaler.update()``), clip it to ``max_grad_norm``, and return its global norm before clipping (zero
        without gradients). No sync: the capturable step masks with it, the default mode reads it once."""
        if scaler is not None:
            scaler.unscale_(self.base_optimizer)
        if not params:
            return self._device_norm([], self._params()[0])
        if self.max_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=self.foreach)
        return F.global_norm(torch._foreach_norm([p.grad for p in params]))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; under torch.compile the same without its dynamo-disabled wrapper, so that a
        compiled whole step (``first_step(zero_grad=False)`` then ``opt.zero_grad()``) has no graph break."""
        if not is_compiling():
            super().zero_grad(set_to_none)
            return
        for p in self._params():
            if p.grad is None or set_to_none:
                p.grad = None
            else:
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()
