"""The shared two-pass core of SAM, ASAM and Friendly-SAM.

Every sharpness-aware step has the same skeleton; only the *direction* of the perturbation differs::

    first pass:   g = grad L_B(w)                                    (user: forward + backward)
    first_step:   d = direction(g, state)       SAM: d = g ;  F-SAM: d = g - sigma * m, then m <- EMA
                  e = rho * d / (||d|| + 1e-12)            ASAM: e = rho * w^2 d / (||w d|| + 1e-12)
                  w_saved <- w ;  w <- w + e
    second pass:  g' = grad L_B(w + e)                               (user: forward + backward)
    second_step:  w <- w_saved (bit-exact, in place) ;  [clip g'] ;  base_optimizer.step() with g'

``||.||`` is ONE global L2 norm over every parameter of every group (as in the official code).

Memory: one parameter-sized buffer (``w_saved``) beyond the base optimizer's state, plus whatever the
direction keeps (F-SAM: its EMA). The direction is computed in the gradient tensors themselves when
``first_step(zero_grad=True)`` (the clean gradient is not needed afterwards), so no per-step allocation
happens after the first step; ``zero_grad=False`` keeps the clean gradient intact by working on a copy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._tensor_ops import FOREACH, PER_TENSOR, TensorOps

# Norm floor of the official implementation: a zero direction gives a zero perturbation, never nan.
NORM_EPS = 1e-12


class _Bucket:
    """Parameters of one param group that share device and dtype (one multi-tensor call each)."""

    __slots__ = ("group", "params", "grads", "saved")

    def __init__(self, group: dict[str, Any]) -> None:
        self.group = group
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.saved: list[Tensor] = []


def _check_number(name: str, value: Any, *, low: float, high: float | None = None, closed_high=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and value >= low and (high is None or (value <= high if closed_high else value < high))
    if not ok:
        bound = f"[{low}, {high}{']' if closed_high else ')'}" if high is not None else f">= {low}"
        raise ValueError(f"invalid {name}={value!r}: it must be a finite number {bound}")


# DTensor parameters (FSDP2): torch (2.11-2.13 at least) has no sharding rule for _foreach_copy_.
_FOREACH_DTENSOR = dataclasses.replace(FOREACH, name="foreach (DTensor)", copy_=PER_TENSOR.copy_)


def _is_process_group(group: Any) -> bool:
    import torch.distributed as dist

    return dist.is_available() and isinstance(group, dist.ProcessGroup)


def _collective_device(group: Any) -> torch.device | None:
    """Where a rank that holds no tensor puts its part of a collective: NCCL needs a CUDA tensor."""
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None


def _sharded_norm(norms: list[Tensor], group: Any) -> float:
    """Global L2 norm when each rank of ``group`` holds a disjoint shard of the gradient: the local squared
    norms are summed, then ONE all-reduce sums them over the group (every rank must call this, also a rank
    that holds no gradient). DTensor norms (FSDP2) count with their local part only."""
    import torch.distributed as dist

    local = [n.to_local() if hasattr(n, "to_local") else n for n in norms]
    if local:
        sq = torch.stack([n.to(local[0].device, torch.float64) for n in local]).square().sum()
    else:
        sq = torch.zeros((), dtype=torch.float64, device=_collective_device(group))
    dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=group)
    return float(sq.sqrt())  # one host sync, identical on every rank: all ranks take the same decisions


class TwoPassOptimizer(Optimizer):
    """Base class of :class:`SAM` and :class:`FriendlySAM`; subclasses define the perturbation direction.

    Subclasses set ``_hyperparameters`` (name -> default, checked by ``_validate_group``) and implement
    ``_direction_(bucket, ops, directions)``, which turns the (unscaled) clean gradients held in
    ``directions`` into the perturbation direction in place, reading per-parameter state only, and
    ``_update_state_(bucket, ops, directions)``, which updates that state from the direction. The latter
    runs only once the direction's norm is known to be finite, so state is never poisoned by inf/nan.

    ``process_group`` (keyword of every subclass): the ``torch.distributed`` group over which the
    parameters are *sharded* (FSDP2 ``fully_shard``, ZeRO): each rank holds a disjoint part of the
    gradient, so the global norms (perturbation, ASAM, ``max_grad_norm`` clipping) sum the local squared
    norms with one all-reduce. Leave it ``None`` (the default: no communication) for one process and for
    DDP, whose gradients are whole on every rank. See ``docs/distributed.md``.

    ``replica_group`` (keyword of every subclass): for fp16 with a ``GradScaler`` under per-replica DDP,
    where each replica's clean gradient is its own (not all-reduced), the group of replicas that must
    agree on skipping a step. If any replica's clean gradient overflows, every replica skips the step and
    records the overflow with its scaler, so the parameters and the loss scales stay identical. It costs
    one 1-element all-reduce per step, only when a scaler is passed. Not needed without a scaler (an
    overflow raises), in synchronized mode (the gradient is already identical) or under sharding (use
    ``process_group`` and a sharded scaler).
    """

    _hyperparameters: dict[str, Any] = {}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        max_grad_norm: float | None = None,
        foreach: bool | None = None,
        process_group: Any = None,
        replica_group: Any = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(base_optimizer, Optimizer):
            raise TypeError(
                f"base_optimizer must be an optimizer class such as torch.optim.SGD, not an instance "
                f"({type(base_optimizer).__name__}); pass the class and give its arguments (lr, momentum, ...) "
                f"to {type(self).__name__} as keyword arguments"
            )
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
            raise TypeError(
                f"base_optimizer must be a torch.optim.Optimizer subclass such as torch.optim.SGD, "
                f"got {base_optimizer!r}"
            )
        if max_grad_norm is not None:
            _check_number("max_grad_norm", max_grad_norm, low=0.0)
            if max_grad_norm == 0:
                raise ValueError("invalid max_grad_norm=0: use None to disable clipping, or a positive norm")
        if foreach not in (None, True, False):
            raise ValueError(f"invalid foreach={foreach!r}: use None (automatic), True or False")
        if process_group is not None and not _is_process_group(process_group):
            raise TypeError(
                f"process_group must be a torch.distributed ProcessGroup (e.g. dist.group.WORLD) over which "
                f"the parameters are sharded, or None; got {process_group!r}"
            )
        if replica_group is not None and not _is_process_group(replica_group):
            raise TypeError(
                f"replica_group must be a torch.distributed ProcessGroup (e.g. dist.group.WORLD) of the DDP "
                f"replicas that perturb independently, or None; got {replica_group!r}"
            )
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in self._hyperparameters}
        defaults = {**self._hyperparameters, **own}
        self._validate_group(defaults, where="")
        self.max_grad_norm = max_grad_norm
        self.foreach = foreach
        # Sharded parameters (FSDP / ZeRO): global norms sum the local squared norms over this group.
        self.process_group = process_group
        # Per-replica DDP with a GradScaler: the replicas agree on skipping an overflowing step.
        self.replica_group = replica_group
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        # One list of group dicts shared by both: schedulers, add_param_group and state_dict see one truth.
        self.param_groups = self.base_optimizer.param_groups
        self._saved: dict[Tensor, Tensor] = {}
        self._perturbed: list[tuple[_Bucket, TensorOps]] | None = None  # between first and second step
        self._skip_base_step = False  # first pass had inf/nan under a GradScaler

    # ----------------------------------------------------------------- hyperparameters and groups
    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        self._validate_group(param_group, where=f" in param group {len(self.param_groups)}")
        if hasattr(self, "base_optimizer"):
            self.base_optimizer.add_param_group(param_group)  # appends to the shared list
        else:
            super().add_param_group(param_group)  # during __init__, before the base optimizer exists

    def _use_foreach(self, params: list[Tensor]) -> bool:
        if self.foreach is not None:
            return self.foreach
        # Like torch.optim: multi-tensor kernels pay off on accelerators; on CPU they are the same loop.
        return all(p.device.type not in ("cpu", "meta") for p in params)

    def _buckets(self) -> list[tuple[_Bucket, TensorOps]]:
        buckets: list[tuple[_Bucket, TensorOps]] = []
        for group in self.param_groups:
            by_key: dict[tuple[torch.device, torch.dtype], _Bucket] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients: the perturbation needs "
                        "a dense global norm; build embeddings with sparse=False"
                    )
                bucket = by_key.setdefault((p.device, p.dtype), _Bucket(group))
                bucket.params.append(p)
                bucket.grads.append(p.grad)
            for bucket in by_key.values():
                ops = FOREACH if self._use_foreach(bucket.params) else PER_TENSOR
                if ops is FOREACH and any(hasattr(p, "to_local") for p in bucket.params):
                    ops = _FOREACH_DTENSOR
                buckets.append((bucket, ops))
        return buckets

    @property
    def is_perturbed(self) -> bool:
        """True between :meth:`first_step` and :meth:`second_step` (the weights are ``w + e``)."""
        return self._perturbed is not None

    def buffer_tensors(self) -> dict[str, list[Tensor]]:
        """Parameter-sized tensors this wrapper holds beyond the base optimizer's state, by role
        (``"saved_weights"``; F-SAM adds ``"ema"`` and, with ``component="full"``, ``"grad_copy"``).
        For memory accounting; the tensors are live: do not modify them."""
        return {"saved_weights": list(self._saved.values())}

    # ----------------------------------------------------------------- the two steps
    @torch.no_grad()
    def first_step(self, zero_grad: bool = True, scaler: torch.amp.GradScaler | None = None) -> None:
        """Perturb the weights ``w <- w + e`` along the direction built from the clean gradient in ``p.grad``.

        Args:
            zero_grad: set the gradients to ``None`` afterwards, ready for the second backward pass
                (default). With ``False`` the clean gradient is left in ``p.grad`` untouched (at the cost
                of a temporary copy), and the second backward pass accumulates onto it.
            scaler: the ``torch.amp.GradScaler`` that scaled the loss. The clean gradients are unscaled
                first (recorded by the scaler against this wrapper, so ``scaler.update()`` lowers the scale
                when they overflow); if they hold inf/nan, nothing is perturbed, no state changes and
                :meth:`second_step` skips the base step.

        Raises:
            FloatingPointError: the clean gradient holds inf/nan and no scaler was given. Nothing
                (weights, optimizer state) has been changed.
        """
        if self._perturbed is not None:
            raise RuntimeError("first_step() called twice: call second_step() to restore the weights first")
        if scaler is not None:
            if self.replica_group is not None:
                self._share_overflow()
            scaler.unscale_(self)
        buckets = self._buckets()
        directions: list[list[Tensor]] = []
        for bucket, _ in buckets:
            grads = bucket.grads if zero_grad else [g.clone() for g in bucket.grads]
            directions.append(grads)

        # Direction (F-SAM: subtract sigma * EMA) and its norm, checked finite before any state changes.
        for (bucket, ops), dirs in zip(buckets, directions):
            self._direction_(bucket, ops, dirs)
        total = self._global_norm([n for (_, ops), dirs in zip(buckets, directions) for n in ops.norms(dirs)])
        if not math.isfinite(total):
            if scaler is None:
                raise FloatingPointError(
                    f"{type(self).__name__}.first_step: the clean gradient holds inf or nan (norm {total}); "
                    "weights and optimizer state are unchanged. Check the loss for inf/nan, lower the learning "
                    "rate, or for fp16 pass the GradScaler: first_step(scaler=...), second_step(scaler=...)"
                )
            if zero_grad:
                self.zero_grad(set_to_none=True)
            self._perturbed, self._skip_base_step = [], True
            return
        for (bucket, ops), dirs in zip(buckets, directions):
            self._update_state_(bucket, ops, dirs)

        # ASAM: the norm is taken of w * d, and the perturbation is w^2 d (scaled).
        if any(bucket.group["adaptive"] for bucket, _ in buckets):
            norms = []
            for (bucket, ops), dirs in zip(buckets, directions):
                if bucket.group["adaptive"]:
                    ops.mul_(dirs, bucket.params)
                norms.extend(ops.norms(dirs))
            total = self._global_norm(norms)

        for (bucket, ops), dirs in zip(buckets, directions):
            bucket.saved = [self._saved_buffer(p) for p in bucket.params]
            ops.copy_(bucket.saved, bucket.params)
            scale = bucket.group["rho"] / (total + NORM_EPS)
            if bucket.group["adaptive"]:
                ops.addcmul_(bucket.params, bucket.params, dirs, scale)
            else:
                ops.add_(bucket.params, dirs, scale)
        if zero_grad:
            self.zero_grad(set_to_none=True)
        self._perturbed = buckets

    def _share_overflow(self) -> None:
        """If the clean gradient of any replica in ``replica_group`` holds inf/nan, make this replica's hold
        one too (a nan in its first gradient), so that ``scaler.unscale_`` records the overflow and the step
        is skipped on every replica alike. Every replica must call it: one all-reduce of one element."""
        import torch.distributed as dist

        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        local = torch.zeros((), device=grads[0].device if grads else _collective_device(self.replica_group))
        for g in grads:
            local = torch.maximum(local, torch.logical_not(torch.isfinite(g)).any().to(local.dtype))
        overflow = local.clone()
        dist.all_reduce(overflow, op=dist.ReduceOp.MAX, group=self.replica_group)
        if bool(overflow) and not bool(local) and grads:
            grads[0].view(-1)[0] = float("nan")

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True, scaler: torch.amp.GradScaler | None = None) -> None:
        """Restore the weights exactly, then let the base optimizer step with the perturbed gradient.

        With ``max_grad_norm`` set, the perturbed gradient is clipped (after unscaling, with a scaler)
        right before the base step: this is the gradient the base optimizer applies.

        Args:
            zero_grad: set gradients to ``None`` after the base step (default).
            scaler: the ``torch.amp.GradScaler``; the base step goes through ``scaler.step`` (which unscales,
                and skips the step on inf/nan). Call ``scaler.update()`` afterwards as usual.
        """
        if self._perturbed is None:
            raise RuntimeError(
                "second_step() called without first_step(): compute the clean gradient, call first_step(), "
                "then the perturbed gradient, then second_step()"
            )
        for bucket, ops in self._perturbed:
            ops.copy_(bucket.params, bucket.saved)  # in place: references to the tensors stay valid
        skip, self._perturbed, self._skip_base_step = self._skip_base_step, None, False
        if not skip:
            if self.max_grad_norm is not None:
                if scaler is not None:
                    scaler.unscale_(self.base_optimizer)
                params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
                if self.process_group is None:
                    torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=self.foreach)
                else:  # the norm of the whole (sharded) gradient, as clip_grad_norm_ computes it
                    total = self._global_norm([torch.linalg.vector_norm(p.grad) for p in params])
                    coef = min(1.0, self.max_grad_norm / (total + 1e-6))
                    for p in params:
                        p.grad.mul_(coef)
            if scaler is not None:
                scaler.step(self.base_optimizer)
            else:
                self.base_optimizer.step()
        # LR schedulers warn unless the optimizer's (patched) step() ran; our step is second_step.
        self._opt_called = True
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, scaler: torch.amp.GradScaler | None = None
    ) -> Any:
        """One full step with a closure that computes the loss and calls ``backward()`` (called twice).

        Returns the loss of the first (clean) pass. The gradients of the second pass are left in
        ``p.grad``, as with any torch optimizer.
        """
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure that recomputes the loss and calls backward(), "
                "because the perturbed gradient needs a second forward/backward pass; or call first_step() "
                "and second_step() around your own two passes"
            )
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True, scaler=scaler)
        with torch.enable_grad():
            closure()
        self.second_step(zero_grad=False, scaler=scaler)
        return loss

    # ----------------------------------------------------------------- helpers
    def _direction_(self, bucket: _Bucket, ops: TensorOps, directions: list[Tensor]) -> None:
        raise NotImplementedError

    def _update_state_(self, bucket: _Bucket, ops: TensorOps, directions: list[Tensor]) -> None:
        raise NotImplementedError

    def _saved_buffer(self, p: Tensor) -> Tensor:
        buf = self._saved.get(p)
        if buf is None:
            buf = self._saved[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buf

    def _global_norm(self, norms: list[Tensor]) -> float:
        if self.process_group is not None:
            return _sharded_norm(norms, self.process_group)
        if not norms:
            return 0.0
        device = norms[0].device
        total = torch.linalg.vector_norm(torch.stack([n.to(device, torch.float64) for n in norms]))
        return float(total)  # one host sync: it decides between perturbing and skipping

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly: own state, base optimizer state, hyperparameters."""
        if self._perturbed is not None:
            raise RuntimeError(
                "state_dict() between first_step() and second_step(): the weights are perturbed right now; "
                "save after second_step()"
            )
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        state["two_pass"] = {"class": type(self).__name__, "format": 1, "max_grad_norm": self.max_grad_norm}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        meta = state_dict.get("two_pass")
        if meta is None or "base_optimizer" not in state_dict:
            raise ValueError(
                f"not a {type(self).__name__} state dict (no 'two_pass'/'base_optimizer' entries): it was "
                "probably saved from a plain torch optimizer or another SAM library"
            )
        if meta["class"] != type(self).__name__:
            raise ValueError(
                f"state dict was saved from {meta['class']}, cannot load it into {type(self).__name__}"
            )
        if self._perturbed is not None:
            raise RuntimeError("load_state_dict() between first_step() and second_step()")
        own = {k: v for k, v in state_dict.items() if k not in ("base_optimizer", "two_pass")}
        self.base_optimizer.load_state_dict(state_dict["base_optimizer"])
        super().load_state_dict(own)
        self.base_optimizer.param_groups = self.param_groups
        self.max_grad_norm = meta["max_grad_norm"]
