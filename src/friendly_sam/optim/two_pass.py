"""The shared two-pass core of SAM, ASAM and Friendly-SAM.

Every sharpness-aware step has the same skeleton; only the *direction* of the perturbation differs::

    first pass:   g = grad L_B(w)                                    (user: forward + backward)
    first_step:   d = direction(g, state)       SAM: d = g ;  F-SAM: d = g - sigma * m, then m <- EMA
                  e = rho * d / (||d|| + 1e-12)            ASAM: e = rho * w^2 d / (||w d|| + 1e-12)
                  w_saved <- w ;  w <- w + e
    second pass:  g' = grad L_B(w + e)                               (user: forward + backward)
    second_step:  w <- w_saved (bit-exact, in place) ;  check g' finite ;  [clip g'] ;
                  base_optimizer.step() with g'

``||.||`` is ONE global L2 norm over every parameter of every group (as in the official code).

Memory: one parameter-sized buffer (``w_saved``) beyond the base optimizer's state, plus whatever the
direction keeps (F-SAM: its EMA). The direction is computed in the gradient tensors themselves when
``first_step(zero_grad=True)`` (the clean gradient is not needed afterwards), so no per-step allocation
happens after the first step; ``zero_grad=False`` keeps the clean gradient intact by working on a copy.

Efficient variants (``perturb_every=k``, ``between=``; see ``docs/efficient.md``): only every k-th step
(steps 0, k, 2k, ... of the optimizer's own counter) is a perturbed two-pass step. On the other steps
:meth:`first_step` applies the base step itself on the clean gradient (``between="base"``), or on the clean
gradient plus LookSAM's stored sharpness component (``between="looksam"``), and leaves
:attr:`is_perturbed` False: the loop skips the second pass and still calls :meth:`second_step`, which
then only finishes the step. A loop that runs the second pass anyway stays correct (the gradient of that
pass is ignored), only slower.

Protocols kept by the wrapper (so that torch and the frameworks treat it as an ordinary optimizer):
step hooks (``register_step_pre_hook``/``post_hook`` and torch's global ones) fire once per full step,
pre at :meth:`first_step`, post after :meth:`second_step`; ``defaults`` holds the base optimizer's
defaults too (schedulers that cycle momentum/betas read them there); ``GradScaler.step(opt, closure)``
goes through the AMP-aware protocol (``_step_supports_amp_scaling``); copies (``copy.deepcopy``,
``pickle``, ``torch.save``) carry the base optimizer and every buffer.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from .amp import calling_grad_scaler, unscale_once
from .collectives import clip_sharded_, is_process_group, sharded_norm, share_overflow
from .engine import ClosurePasses, bind_model
from .tensor_ops import FOREACH, PER_TENSOR, TensorOps
from .validation import check_lr, check_number

__all__ = ["BETWEEN_MODES", "NORM_EPS", "Bucket", "TwoPassOptimizer"]

# Norm floor of the official implementation: a zero direction gives a zero perturbation, never nan.
NORM_EPS = 1e-12

# What the optimizer does on the steps between perturbed ones (perturb_every > 1): a plain base step on the
# clean gradient, or LookSAM's (Liu et al., CVPR 2022) reuse of the last measured sharpness component.
BETWEEN_MODES = ("base", "looksam")

# Attributes that never travel with a copy of the optimizer: hooks (often closures over other objects)
# and the bound ``step`` wrapper an LR scheduler installs on the instance (it would step the original).
_NOT_COPIED = ("step",)


class Bucket:
    """Parameters of one param group that share device and dtype (one multi-tensor call each), with their
    gradients and, while perturbed, the buffers holding their unperturbed values."""

    __slots__ = ("group", "params", "grads", "saved")

    def __init__(self, group: dict[str, Any]) -> None:
        self.group = group
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.saved: list[Tensor] = []


# DTensor parameters (FSDP2): torch (2.11-2.13 at least) has no sharding rule for _foreach_copy_.
_FOREACH_DTENSOR = dataclasses.replace(FOREACH, name="foreach (DTensor)", copy_=PER_TENSOR.copy_)


def _take_migration_kwargs(kwargs: dict[str, Any]) -> None:
    """Arguments of pytorch-optimizer's SAM/FriendlySAM that a user switching the import still passes:
    accepted where they mean what we do, refused with our equivalent otherwise (never forwarded to the
    base optimizer, which would raise an unrelated TypeError)."""
    if "perturb_eps" in kwargs:
        eps = kwargs.pop("perturb_eps")
        if eps != NORM_EPS:
            raise ValueError(
                f"perturb_eps={eps!r} (pytorch-optimizer's norm floor) is not adjustable here: the floor is "
                f"fixed at NORM_EPS = {NORM_EPS:g}, the official F-SAM/SAM code's value (and "
                "pytorch-optimizer's default); remove the argument"
            )
    if kwargs.pop("use_gc", False):
        raise ValueError(
            "use_gc=True (pytorch-optimizer's gradient centralization of the perturbation) is not "
            "implemented here; remove the argument (use_gc=False is accepted)"
        )


class TwoPassOptimizer(Optimizer):
    """Base class of :class:`SAM` and :class:`FriendlySAM`; subclasses define the perturbation direction.

    Subclasses list their per-group hyperparameters in ``HYPERPARAMETERS`` (their defaults are those of
    the subclass's ``__init__`` signature: one source) and implement ``_validate_group``,
    ``_direction_(bucket, ops, directions)``, which turns the (unscaled) clean gradients held in
    ``directions`` into the perturbation direction in place, reading per-parameter state only, and
    ``_update_state_(bucket, ops, directions, context)``, which updates that state from the direction. The
    latter runs only once the direction's norm is known to be finite, so state is never poisoned by inf/nan.
    ``_direction_known`` (optional) sees every direction once its norm is known: instrumentation goes there.

    ``process_group`` (keyword of every subclass): the ``torch.distributed`` group over which the
    parameters are *sharded* (FSDP2 ``fully_shard``, ZeRO): each rank holds a disjoint part of the
    gradient, so the global norms (perturbation, ASAM, ``max_grad_norm`` clipping) sum the local squared
    norms with one all-reduce. Leave it ``None`` (the default: no communication) for one process and for
    DDP, whose gradients are whole on every rank. See ``docs/distributed.md``.

    ``model`` (keyword of every subclass): the model the parameters belong to; ``step(closure)`` then keeps
    its BatchNorm running statistics out of the perturbed closure call (without it, every BatchNorm layer
    that runs in that call is frozen, found through a global module hook). See
    :func:`friendly_sam.optim.engine.bind_model` and docs/integrations.md.

    ``replica_group`` (keyword of every subclass): for fp16 with a ``GradScaler`` under per-replica DDP,
    where each replica's clean gradient is its own (not all-reduced), the group of replicas that must
    agree on skipping a step. If any replica's clean gradient overflows, every replica skips the step and
    records the overflow with its scaler, so the parameters and the loss scales stay identical. It costs
    one 1-element all-reduce per step, only when a scaler is passed. Not needed without a scaler (an
    overflow raises), in synchronized mode (the gradient is already identical) or under sharding (use
    ``process_group`` and a sharded scaler).
    """

    HYPERPARAMETERS: tuple[str, ...] = ()
    # torch.amp.GradScaler.step(optimizer, closure) hands itself to step(grad_scaler=...) instead of
    # unscaling once and stepping: both of our passes are unscaled and checked (see step()).
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        max_grad_norm: float | None = None,
        foreach: bool | None = None,
        perturb_every: int = 1,
        between: str = "base",
        looksam_alpha: float = 0.7,
        process_group: Any = None,
        replica_group: Any = None,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        _check_base_class(base_optimizer, type(self).__name__)
        _check_schedule(perturb_every, between, looksam_alpha, process_group)
        if max_grad_norm is not None:
            check_number("max_grad_norm", max_grad_norm, low=0.0)
            if max_grad_norm == 0:
                raise ValueError("invalid max_grad_norm=0: use None to disable clipping, or a positive norm")
        if foreach not in (None, True, False):
            raise ValueError(f"invalid foreach={foreach!r}: use None (automatic), True or False")
        for name, group, role in (
            ("process_group", process_group, "over which the parameters are sharded"),
            ("replica_group", replica_group, "of the DDP replicas that perturb independently"),
        ):
            if group is not None and not is_process_group(group):
                raise TypeError(
                    f"{name} must be a torch.distributed ProcessGroup (e.g. dist.group.WORLD) {role}, "
                    f"or None; got {group!r}"
                )
        _take_migration_kwargs(kwargs)
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in self.HYPERPARAMETERS}
        defaults = {**self.hyperparameter_defaults(), **own}
        self._validate_group(defaults, where="")
        self.max_grad_norm = max_grad_norm
        self.foreach = foreach
        # Sharded parameters (FSDP / ZeRO): global norms sum the local squared norms over this group.
        self.process_group = process_group
        # Per-replica DDP with a GradScaler: the replicas agree on skipping an overflowing step.
        self.replica_group = replica_group
        bind_model(self, model)  # step(closure) freezes its BatchNorm statistics in the perturbed call
        if "lr" in kwargs:  # before the base optimizer, which may accept nan or word it its own way
            check_lr(kwargs["lr"])
        super().__init__(params, defaults)
        self._check_base_kwargs(base_optimizer, kwargs)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        # One list of group dicts shared by both: schedulers, add_param_group and state_dict see one truth.
        self.param_groups = self.base_optimizer.param_groups
        # The base optimizer's defaults (lr, momentum, betas, ...) too: schedulers that cycle momentum
        # (OneCycleLR, CyclicLR) look for "momentum"/"betas" here.
        self.defaults = {**self.base_optimizer.defaults, **defaults}
        for i, group in enumerate(self.param_groups):
            check_lr(group.get("lr", 0.0), f" in param group {i}" if len(self.param_groups) > 1 else "")
        self._saved: dict[Tensor, Tensor] = {}
        self._perturbed: list[tuple[Bucket, TensorOps]] | None = None  # between first and second step
        self._skip_base_step = False  # first pass had inf/nan under a GradScaler
        self._in_step = False  # inside step(closure): torch's step wrapper runs the hooks
        self._grads_from_step = False  # the gradients in p.grad were left by our last step(closure)
        self.perturb_every, self.between, self.looksam_alpha = perturb_every, between, float(looksam_alpha)
        self._steps = 0  # full steps finished (perturbed or not): decides which steps perturb
        self._off_step_open = False  # first_step() took an unperturbed step; second_step() closes it
        self._component_valid = False  # LookSAM: the "looksam" buffers hold a measured component

    # ----------------------------------------------------------------- hyperparameters and groups
    @classmethod
    def hyperparameter_defaults(cls) -> dict[str, Any]:
        """Per-group hyperparameters and their defaults, read from the constructor's signature."""
        signature = inspect.signature(cls.__init__).parameters
        return {name: signature[name].default for name in cls.HYPERPARAMETERS}

    @classmethod
    def own_arguments(cls) -> list[str]:
        """Keyword arguments the wrapper itself takes (everything else goes to the base optimizer)."""
        skip = {"self", "params", "base_optimizer"}
        names = [n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind != p.VAR_KEYWORD]
        return [n for n in names if n not in skip] + ["process_group", "replica_group", "model"]

    def _check_base_kwargs(self, base_optimizer: type[Optimizer], kwargs: dict[str, Any]) -> None:
        parameters = inspect.signature(base_optimizer.__init__).parameters
        if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            return  # the base optimizer takes anything: it checks its own arguments
        unknown = [k for k in kwargs if k not in parameters or k in ("self", "params")]
        if unknown:
            theirs = [n for n in parameters if n not in ("self", "params")]
            raise TypeError(
                f"{type(self).__name__}: unknown argument(s) {', '.join(unknown)}. "
                f"{type(self).__name__}'s own arguments: {', '.join(dict.fromkeys(self.own_arguments()))}; "
                f"every other keyword goes to the base optimizer {base_optimizer.__name__}, whose "
                f"arguments are: {', '.join(theirs)}"
            )

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        where = f" in param group {len(self.param_groups)}"
        self._validate_group(param_group, where=where)
        if "lr" in param_group:
            check_lr(param_group["lr"], where)
        if hasattr(self, "base_optimizer"):
            self.base_optimizer.add_param_group(param_group)  # appends to the shared list
        else:
            super().add_param_group(param_group)  # during __init__, before the base optimizer exists

    def _use_foreach(self, params: list[Tensor]) -> bool:
        if self.foreach is not None:
            return self.foreach
        # Like torch.optim: multi-tensor kernels pay off on accelerators; on CPU they are the same loop.
        return all(p.device.type not in ("cpu", "meta") for p in params)

    def _buckets(self) -> list[tuple[Bucket, TensorOps]]:
        buckets: list[tuple[Bucket, TensorOps]] = []
        for group in self.param_groups:
            by_key: dict[tuple[torch.device, torch.dtype], Bucket] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients: the perturbation needs "
                        "a dense global norm; build embeddings with sparse=False"
                    )
                bucket = by_key.setdefault((p.device, p.dtype), Bucket(group))
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
        """True between :meth:`first_step` and :meth:`second_step` of a perturbed step (the weights are
        ``w + e``): the loop must run the second (perturbed) pass. False after the :meth:`first_step` of an
        unperturbed step (``perturb_every > 1``), which has already stepped: skip the second pass and call
        :meth:`second_step` to finish the step."""
        return self._perturbed is not None

    @property
    def next_step_perturbs(self) -> bool:
        """Whether the next :meth:`first_step` perturbs (step ``t`` perturbs when ``t % perturb_every ==
        0``, ``t`` counting finished steps from 0). Loops that prepare the clean pass differently for the
        two kinds (sub-batch ascent, per-replica DDP's ``no_sync``) read it before the clean pass."""
        return self._steps % self.perturb_every == 0

    @property
    def steps_taken(self) -> int:
        """Full steps finished (each first_step/second_step pair; part of ``state_dict()``)."""
        return self._steps

    def buffer_tensors(self) -> dict[str, list[Tensor]]:
        """Parameter-sized tensors this wrapper holds beyond the base optimizer's state, by role
        (``"saved_weights"``; ``between="looksam"`` adds ``"looksam_component"``; F-SAM adds ``"ema"`` and,
        with ``component="full"``, ``"grad_copy"``). For memory accounting; the tensors are live: do not
        modify them."""
        buffers = {"saved_weights": list(self._saved.values())}
        looksam = [s["looksam"] for s in self.state.values() if "looksam" in s]
        if looksam:
            buffers["looksam_component"] = looksam
        return buffers

    def _run_step_hooks(self, pre: bool) -> None:
        """torch's step hooks (this optimizer's and the global ones), as ``Optimizer.step`` runs them; not
        inside :meth:`step`, whose torch wrapper runs them itself (once per full step either way)."""
        if self._in_step:
            return
        if pre:
            hooks = chain(_global_optimizer_pre_hooks.values(), self._optimizer_step_pre_hooks.values())
        else:
            self._optimizer_step_code()
            hooks = chain(self._optimizer_step_post_hooks.values(), _global_optimizer_post_hooks.values())
        for hook in hooks:
            if hook(self, (self,), {}) is not None:
                raise RuntimeError(
                    f"a step pre-hook returned new arguments for {type(self).__name__}: first_step()/"
                    "second_step() have no step arguments to replace; return None from the hook"
                )

    # ----------------------------------------------------------------- the first step
    @torch.no_grad()
    def first_step(self, zero_grad: bool = True, scaler: torch.amp.GradScaler | None = None) -> None:
        """Perturb the weights ``w <- w + e`` along the direction built from the clean gradient in ``p.grad``.

        On an unperturbed step (``perturb_every > 1``, :attr:`next_step_perturbs` False) it takes the base
        step itself instead, on the clean gradient (``between="base"``) or on the clean gradient plus the
        stored LookSAM component (``between="looksam"``), clipped to ``max_grad_norm`` if set, and leaves
        :attr:`is_perturbed` False; F-SAM's EMA takes the clean gradient there too. ``zero_grad=False``
        then leaves the gradient the base optimizer applied in ``p.grad``.

        Runs the step pre-hooks (``register_step_pre_hook`` and torch's global ones).

        Args:
            zero_grad: set the gradients to ``None`` afterwards, ready for the second backward pass
                (default). With ``False`` the clean gradient is left in ``p.grad`` untouched (at the cost
                of a temporary copy), and the second backward pass accumulates onto it.
            scaler: the ``torch.amp.GradScaler`` that scaled the loss. The clean gradients are unscaled
                first (recorded by the scaler against this wrapper, so ``scaler.update()`` lowers the scale
                when they overflow); if they hold inf/nan, nothing is perturbed, no state changes and
                :meth:`second_step` skips the base step.

        Raises:
            FloatingPointError: the clean gradient holds inf/nan and no scaler was given, or the
                perturbation ``rho / ||d||`` overflows a parameter's dtype.

        Any exception leaves the weights as they were (the step is transactional) and, short of
        ASAM's second norm, the optimizer state too (``between="looksam"``: the stored component is
        dropped on a perturbed step that raises; the next off-steps are plain base steps).
        """
        if self._perturbed is not None or self._off_step_open:
            raise RuntimeError("first_step() called twice: call second_step() to finish the step first")
        self._run_step_hooks(pre=True)
        if scaler is not None:
            self._unscale_clean(scaler)
        buckets = self._buckets()
        if not self.next_step_perturbs:
            self._unperturbed_step(buckets, zero_grad, skip=scaler is not None)
            return
        if self.between == "looksam":  # keep g: second_step measures the component against it
            for bucket, ops in buckets:
                ops.copy_([self._looksam_buffer(p) for p in bucket.params], bucket.grads)
            self._component_valid = False
        directions = [
            bucket.grads if zero_grad else [g.clone() for g in bucket.grads] for bucket, _ in buckets
        ]
        # Direction (F-SAM: subtract sigma * EMA) and its norm, checked finite before any state changes.
        contexts = [self._direction_(bucket, ops, dirs) for (bucket, ops), dirs in zip(buckets, directions)]
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
        adaptive = any(bucket.group["adaptive"] for bucket, _ in buckets)
        if not adaptive:
            self._check_scales(buckets, total)
        self._direction_known(buckets, contexts)
        for (bucket, ops), dirs, context in zip(buckets, directions, contexts):
            self._update_state_(bucket, ops, dirs, context)
        if adaptive:  # ASAM: the norm is taken of w * d, and the perturbation is w^2 d (scaled).
            norms = []
            for (bucket, ops), dirs in zip(buckets, directions):
                if bucket.group["adaptive"]:
                    ops.mul_(dirs, bucket.params)
                norms.extend(ops.norms(dirs))
            total = self._global_norm(norms)
            self._check_scales(buckets, total)
        self._perturb(buckets, directions, total)
        if zero_grad:
            self.zero_grad(set_to_none=True)
        self._perturbed = buckets

    def _unscale_clean(self, scaler: torch.amp.GradScaler) -> None:
        if self.replica_group is not None:
            share_overflow([p.grad for p in self._params() if p.grad is not None], self.replica_group)
        unscale_once(scaler, self)

    def _check_scales(self, buckets: list[tuple[Bucket, TensorOps]], total: float) -> None:
        """Refuse, before the weights change, a perturbation scale a parameter's dtype cannot hold (a huge
        rho): torch would raise part-way (a float alpha) or silently write inf (addcmul's value)."""
        for bucket, _ in buckets:
            scale = bucket.group["rho"] / (total + NORM_EPS)
            dtype = bucket.params[0].dtype
            if dtype.is_floating_point and scale > torch.finfo(dtype).max:
                raise FloatingPointError(
                    f"{type(self).__name__}.first_step: the perturbation scale rho / ||d|| = {scale:.3g} "
                    f"overflows {dtype} (rho={bucket.group['rho']!r}, ||d||={total:.3g}); weights and "
                    "optimizer state are unchanged. Use a smaller rho"
                )

    def _perturb(self, buckets: list[tuple[Bucket, TensorOps]], directions: list[list[Tensor]], total: float):
        """Save and perturb every bucket; if anything raises part-way, restore those already touched."""
        touched: list[tuple[Bucket, TensorOps]] = []
        try:
            for (bucket, ops), dirs in zip(buckets, directions):
                bucket.saved = [self._saved_buffer(p) for p in bucket.params]
                ops.copy_(bucket.saved, bucket.params)
                touched.append((bucket, ops))
                scale = bucket.group["rho"] / (total + NORM_EPS)
                if bucket.group["adaptive"]:
                    ops.addcmul_(bucket.params, bucket.params, dirs, scale)
                else:
                    ops.add_(bucket.params, dirs, scale)
        except BaseException:
            for bucket, ops in touched:
                ops.copy_(bucket.params, bucket.saved)
            raise

    # ----------------------------------------------------------------- the second step
    @torch.no_grad()
    def second_step(self, zero_grad: bool = True, scaler: torch.amp.GradScaler | None = None) -> None:
        """Restore the weights exactly, then let the base optimizer step with the perturbed gradient.

        After the :meth:`first_step` of an unperturbed step it only finishes the step (counter, hooks,
        ``zero_grad``): the gradient then in ``p.grad`` is ignored.

        The perturbed gradient is checked like the clean one; with ``max_grad_norm`` set it is clipped
        (after unscaling, with a scaler) right before the base step: this is the gradient the base
        optimizer applies. Runs the step post-hooks at the end.

        Args:
            zero_grad: set gradients to ``None`` after the base step (default).
            scaler: the ``torch.amp.GradScaler``; the base step goes through ``scaler.step`` (which unscales,
                and skips the step on inf/nan, recording the overflow). Call ``scaler.update()`` afterwards.

        Raises:
            FloatingPointError: the perturbed gradient holds inf/nan and no scaler was given. The weights
                are restored and the base optimizer has not stepped (F-SAM's EMA has already taken this
                step's clean gradient, which was finite).
        """
        if self._off_step_open:  # first_step() already took this unperturbed step: only finish it
            self._off_step_open = False
            self._finish_step(zero_grad)
            return
        if self._perturbed is None:
            raise RuntimeError(
                "second_step() called without first_step(): compute the clean gradient, call first_step(), "
                "then the perturbed gradient, then second_step()"
            )
        skip, self._skip_base_step = self._skip_base_step, False
        if self.between == "looksam" and not skip:
            self._measure_component()
        self._restore()
        if not skip:
            self._clip_and_check(scaler)
            if scaler is not None:
                scaler.step(self.base_optimizer)
            else:
                self.base_optimizer.step()
        self._finish_step(zero_grad)

    def _finish_step(self, zero_grad: bool) -> None:
        self._steps += 1
        # LR schedulers warn unless the optimizer's (patched) step() ran; our step is second_step.
        self._opt_called = True
        self._grads_from_step = False  # step(closure) sets it again when it called us
        if zero_grad:
            self.zero_grad(set_to_none=True)
        self._run_step_hooks(pre=False)

    # ----------------------------------------------------------------- unperturbed steps (perturb_every > 1)
    @torch.no_grad()
    def _unperturbed_step(self, buckets: list[tuple[Bucket, TensorOps]], zero_grad: bool, skip: bool) -> None:
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
                self._add_component(buckets, total)
            if self.max_grad_norm is not None:
                self._clip([p for bucket, _ in buckets for p in bucket.params])
            self.base_optimizer.step()  # gradients already unscaled (first_step's scaler)
        if zero_grad:
            self.zero_grad(set_to_none=True)
        self._off_step_open = True

    def _add_component(self, buckets: list[tuple[Bucket, TensorOps]], grad_norm: float) -> None:
        """LookSAM: ``g <- g + alpha * ||g|| / ||v|| * v`` with ``v`` the stored sharpness component."""
        if not self._component_valid:
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
        if v_norm == 0.0 or grad_norm == 0.0:
            return
        for grads, vs, ops in parts:
            ops.add_(grads, vs, self.looksam_alpha * grad_norm / v_norm)

    @torch.no_grad()
    def _measure_component(self) -> None:
        """LookSAM: ``v <- g_s - (<g_s, g> / ||g||^2) g``, the part of the perturbed gradient ``g_s``
        orthogonal to the clean ``g`` (equally, of ``g_s - g``), computed in the buffer holding ``g``. The
        off-steps use only its direction, so an unscaled (GradScaler) ``g_s`` gives the same result; an
        inf/nan one leaves no component (the next off-steps are plain base steps)."""
        pairs = [
            (p.grad, self.state[p]["looksam"])
            for p in self._params()
            if p.grad is not None and "looksam" in self.state[p]
        ]
        if not pairs:
            return
        device = pairs[0][1].device
        sums = torch.stack(
            [torch.stack([(gs * g).sum(), (g * g).sum()]).to(device, torch.float64) for gs, g in pairs]
        ).sum(0)
        dot, gg = (float(x) for x in sums)  # one host sync per perturbed step
        if not (math.isfinite(dot) and math.isfinite(gg)) or gg == 0.0:
            return
        for gs, g in pairs:
            g.mul_(-dot / gg).add_(gs)
        self._component_valid = True

    def _looksam_buffer(self, p: Tensor) -> Tensor:
        buf = self.state[p].get("looksam")
        if buf is None:
            buf = self.state[p]["looksam"] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buf

    def _observe_(self, bucket: Bucket, ops: TensorOps, grads: list[Tensor]) -> None:
        """What the method learns from the clean gradient of an unperturbed step (F-SAM: its EMA). Must not
        modify ``grads``. Nothing by default."""

    @torch.no_grad()
    def _restore(self) -> None:
        assert self._perturbed is not None
        for bucket, ops in self._perturbed:
            ops.copy_(bucket.params, bucket.saved)  # in place: references to the tensors stay valid
        self._perturbed = None

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
        # the norm of the whole (sharded) gradient, as clip_grad_norm_ computes it
        return clip_sharded_([p.grad for p in params], self.max_grad_norm, self.process_group)

    # ----------------------------------------------------------------- one call for both passes
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Any] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> Any:
        """One full step with a closure that zeroes the gradients, computes the loss and calls
        ``backward()``. It is called twice: at ``w`` (the clean pass), then at ``w + e``; once on the
        unperturbed steps of ``perturb_every > 1`` (whose applied gradient it leaves in ``p.grad``).

        Returns the loss of the first (clean) pass. The gradients of the second pass are left in
        ``p.grad``, as with any torch optimizer. Step hooks run once.

        ``scaler`` (ours) or ``grad_scaler`` (what ``torch.amp.GradScaler.step(optimizer, closure)`` passes,
        e.g. from accelerate's fp16 ``AcceleratedOptimizer.step(closure)``): both passes are unscaled and
        checked; an overflow in either skips the base step and is recorded for ``scaler.update()``.
        """
        if grad_scaler is None and (hasattr(self, "found_inf") or hasattr(self, "grad_scale")):
            grad_scaler = calling_grad_scaler(type(self).__name__)
        if grad_scaler is not None:
            if scaler is not None and scaler is not grad_scaler:
                raise ValueError("step() got two different GradScalers (scaler= and grad_scaler=)")
            scaler = grad_scaler
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure that recomputes the loss and calls backward(), "
                "because the perturbed gradient needs a second forward/backward pass; or call first_step() "
                "and second_step() around your own two passes"
            )
        self._refuse_foreign_gradient()
        passes = ClosurePasses(self, closure)  # BatchNorm frozen and RNG replayed in the perturbed call (engine)
        self._in_step = True
        try:
            with torch.enable_grad():
                loss = closure()
            perturbs = self.next_step_perturbs
            # unperturbed step: one closure call; the gradient the base step applied stays in p.grad
            self.first_step(zero_grad=perturbs, scaler=scaler)
            if self.is_perturbed:
                with torch.enable_grad(), passes.perturbed():
                    closure()
            self.second_step(zero_grad=False, scaler=scaler)
        except BaseException:
            if self._perturbed is not None:  # the second closure raised: never leave w + e behind
                self._restore()
                self._skip_base_step = False
            raise
        finally:
            self._in_step = False
        self._grads_from_step = True
        passes.finished(self)
        return loss

    def _refuse_foreign_gradient(self) -> None:
        """davda54/sam and pytorch-optimizer expect ``loss.backward(); opt.step(closure)`` (the closure runs
        the second pass only). Here the closure runs both passes, so a gradient computed before ``step()``
        would be added to the clean one (a silently wrong direction) unless the closure zeroes it. Refuse
        a non-zero gradient that the previous ``step(closure)`` did not leave (checked until the first
        such step: one host sync, once)."""
        if self._grads_from_step:
            return
        grads = [p.grad for p in self._params() if p.grad is not None]
        if grads and bool(torch.stack([g.detach().abs().amax().to(torch.float32) for g in grads]).amax() > 0):
            raise RuntimeError(
                f"{type(self).__name__}.step(closure) found gradients computed before it. Unlike davda54/sam "
                "and pytorch-optimizer, step(closure) runs BOTH passes through the closure (which must zero "
                "the gradients, then compute the loss and call backward()): drop the backward before "
                "step(), or call opt.zero_grad() first. To accumulate gradients over micro-batches, use "
                "first_step()/second_step() around your own passes"
            )

    # ----------------------------------------------------------------- what a method defines
    def _direction_(self, bucket: Bucket, ops: TensorOps, directions: list[Tensor]) -> Any:
        """Turn the clean gradients in ``directions`` into the perturbation direction, in place, reading
        state only. Returns what :meth:`_update_state_` needs of this bucket (passed back to it)."""
        raise NotImplementedError

    def _direction_known(self, buckets: list[tuple[Bucket, TensorOps]], contexts: list[Any]) -> None:
        """Called once per step when every direction and their global norm are known (finite), before
        any state changes: the place for instrumentation. Nothing by default."""

    def _update_state_(self, bucket: Bucket, ops: TensorOps, directions: list[Tensor], context: Any) -> None:
        """Update the method's state from this bucket's direction (only once its norm is known finite)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- helpers

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _saved_buffer(self, p: Tensor) -> Tensor:
        buf = self._saved.get(p)
        if buf is None:
            buf = self._saved[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buf

    def _global_norm(self, norms: list[Tensor]) -> float:
        if self.process_group is not None:
            return sharded_norm(norms, self.process_group)
        if not norms:
            return 0.0
        device = norms[0].device
        total = torch.linalg.vector_norm(torch.stack([n.to(device, torch.float64) for n in norms]))
        return float(total)  # one host sync: it decides between perturbing and skipping

    # ----------------------------------------------------------------- copies and checkpoints
    def __getstate__(self) -> dict[str, Any]:
        """Everything (base optimizer, buffers, hyperparameters) but hooks: ``copy.deepcopy``, ``pickle``
        and ``torch.save`` give a working optimizer. Copy the model and the optimizer in ONE call
        (``copy.deepcopy((model, opt))``) so that the copy's parameters are the copied model's."""
        if self._perturbed is not None or self._off_step_open:
            raise RuntimeError("cannot copy the optimizer between first_step() and second_step()")
        if self.process_group is not None or self.replica_group is not None:
            raise TypeError(
                f"cannot copy or pickle a {type(self).__name__} bound to a process group: build a new one "
                "and load_state_dict(opt.state_dict())"
            )
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in _NOT_COPIED and not (k.startswith("_optimizer_") and k.endswith("_hooks"))
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly: own state, base optimizer state, hyperparameters."""
        if self._perturbed is not None or self._off_step_open:
            raise RuntimeError(
                "state_dict() between first_step() and second_step(): the step is not finished (the weights "
                "may be perturbed right now); save after second_step()"
            )
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        state["two_pass"] = {
            "class": type(self).__name__,
            "base_class": type(self.base_optimizer).__name__,
            "format": 3,
            "max_grad_norm": self.max_grad_norm,
            # the period's position (format 3): resuming mid-period perturbs on the same steps
            "steps": self._steps,
            "perturb_every": self.perturb_every,
            "between": self.between,
            "component_valid": self._component_valid,
        }
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
        if self._perturbed is not None or self._off_step_open:
            raise RuntimeError("load_state_dict() between first_step() and second_step()")
        self._check_base_state(meta, state_dict["base_optimizer"])
        own = {k: v for k, v in state_dict.items() if k not in ("base_optimizer", "two_pass")}
        self.base_optimizer.load_state_dict(state_dict["base_optimizer"])
        super().load_state_dict(own)
        self.base_optimizer.param_groups = self.param_groups
        self.max_grad_norm = meta["max_grad_norm"]
        # perturb_every/between/looksam_alpha are this optimizer's construction arguments; the counter and
        # the LookSAM component's validity travel (format < 3: saved before they existed, every step perturbed)
        self._steps = int(meta.get("steps", 0))
        self._component_valid = bool(meta.get("component_valid", False)) and self.between == "looksam"
        for group in self.param_groups:  # state dicts saved before a hyperparameter existed
            for key, value in self.hyperparameter_defaults().items():
                group.setdefault(key, value)

    def _check_base_state(self, meta: dict[str, Any], base_state: dict[str, Any]) -> None:
        """Refuse a state dict whose base optimizer differs from ours (torch would fail with a bare
        KeyError, or load nonsense). Format 1 (no ``base_class``): a saved group key that our base
        optimizer does not know (SGD's momentum in AdamW, AdamW's betas in SGD) betrays another class."""
        ours = type(self.base_optimizer).__name__
        saved = meta.get("base_class")
        if saved is None:
            saved_keys = {k for g in base_state.get("param_groups", []) for k in g}
            foreign = sorted(saved_keys & _torch_optimizer_arguments() - set(self.defaults))
            saved = f"another optimizer (its groups have {', '.join(foreign)})" if foreign else ours
        if saved != ours:
            raise ValueError(
                f"state dict was saved with base optimizer {saved}, this {type(self).__name__} wraps {ours}: "
                f"build the optimizer with the base optimizer it was trained with"
            )


def _check_schedule(perturb_every: Any, between: Any, looksam_alpha: Any, process_group: Any) -> None:
    if isinstance(perturb_every, bool) or not isinstance(perturb_every, int) or perturb_every < 1:
        raise ValueError(
            f"invalid perturb_every={perturb_every!r}: it must be an integer >= 1 (1: every step perturbs)"
        )
    if between not in BETWEEN_MODES:
        raise ValueError(
            f"invalid between={between!r}: use 'base' (plain base steps between perturbed ones) or "
            "'looksam' (reuse the last measured sharpness component)"
        )
    check_number("looksam_alpha", looksam_alpha, low=0.0)
    if between == "looksam" and process_group is not None:
        raise ValueError(
            "between='looksam' is not supported with a sharded process_group (its projection needs a "
            "global dot product); use between='base'"
        )


def _torch_optimizer_arguments() -> set[str]:
    """Argument names of torch's own optimizers (the keys their param groups carry)."""
    names: set[str] = set()
    for obj in vars(torch.optim).values():
        if isinstance(obj, type) and issubclass(obj, Optimizer) and obj is not Optimizer:
            names |= set(inspect.signature(obj.__init__).parameters)
    return names - {"self", "params"}


def _check_base_class(base_optimizer: Any, name: str) -> None:
    if isinstance(base_optimizer, Optimizer):
        raise TypeError(
            f"base_optimizer must be an optimizer class such as torch.optim.SGD, not an instance "
            f"({type(base_optimizer).__name__}); pass the class and give its arguments (lr, momentum, ...) "
            f"to {name} as keyword arguments"
        )
    if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
        raise TypeError(
            f"base_optimizer must be a torch.optim.Optimizer subclass such as torch.optim.SGD, "
            f"got {base_optimizer!r}"
        )
