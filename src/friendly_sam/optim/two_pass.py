"""The shared two-pass core of SAM, ASAM and Friendly-SAM: a thin optimizer over ``functional.py``.

Every sharpness-aware step has the same skeleton; only the *direction* of the perturbation differs (the
math, on one screen: ``functional.py``)::

    first pass:   g = grad L_B(w)                                    (user: forward + backward)
    first_step:   d = direction(g, state) ; e = rho d / (||d|| + 1e-12) ; w_saved <- w ; w <- w + e
    second pass:  g' = grad L_B(w + e)                               (user: forward + backward)
    second_step:  w <- w_saved (bit-exact, in place) ; check g' finite ; [clip g'] ; base step with g'

The step is ONE explicit :class:`Phase`: ``IDLE`` -> ``first_step`` -> ``PERTURBED`` (or ``SKIPPING``: the
clean gradient overflowed under a GradScaler; or ``STEPPED``: an unperturbed step of ``perturb_every > 1``
already took the base step) -> ``second_step`` -> ``IDLE``.

Memory: one parameter-sized buffer (``w_saved``, allocated with the parameter group, so that it exists
before a compiled first call) beyond the base optimizer's state, plus whatever the direction keeps (F-SAM:
its EMA). The direction is computed in the gradient tensors themselves when ``first_step(zero_grad=True)``;
``zero_grad=False`` keeps the clean gradient intact by working on a copy.

Where the rest lives: the efficient variants (``perturb_every``, LookSAM) in ``periodic.py``; GradScaler and
``step(closure)`` plumbing in ``amp.py`` and :meth:`step`; compatibility with other libraries and older
state dicts in ``migration.py``; checks in ``validation.py``; collectives in ``collectives.py``.

Protocols kept (so that torch and the frameworks treat it as an ordinary optimizer): step hooks fire once
per full step, pre at :meth:`first_step`, post after :meth:`second_step`; ``defaults`` holds the base
optimizer's defaults too; ``GradScaler.step(opt, closure)`` goes through the AMP-aware protocol; copies
(``copy.deepcopy``, ``pickle``, ``torch.save``) carry the base optimizer and every buffer.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import functional as F
from .amp import unscale_once
from .capturable import CapturableSteps, check_capturable
from .collectives import sharded_norm, share_overflow
from .engine import bind_model
from .gradient_checks import GradientChecks
from .migration import check_base_class, take_migration_kwargs
from .periodic import BETWEEN_MODES, PeriodicSteps
from .phase import Phase, StepState
from .state_dict import StateDictMixin
from .steps import StepProtocol
from .tensor_ops import FOREACH, PER_TENSOR, TensorOps
from .validation import (
    check_base_kwargs,
    check_fraction,
    check_lr,
    check_new_params,
    check_options,
    check_schedule,
)

__all__ = ["BETWEEN_MODES", "NORM_EPS", "Bucket", "Phase", "TwoPassOptimizer"]

NORM_EPS = F.NORM_EPS


class Bucket:
    """Parameters of one param group that share device and dtype (one multi-tensor call each), with their
    gradients and their saved-weights buffers."""

    __slots__ = ("group", "params", "grads", "saved")

    def __init__(self, group: dict[str, Any]) -> None:
        self.group = group
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.saved: list[Tensor] = []


# DTensor parameters (FSDP2): torch (2.11-2.13 at least) has no sharding rule for _foreach_copy_.
_FOREACH_DTENSOR = dataclasses.replace(FOREACH, name="foreach (DTensor)", copy_=PER_TENSOR.copy_)


class TwoPassOptimizer(
    CapturableSteps, GradientChecks, PeriodicSteps, StepProtocol, StateDictMixin, Optimizer
):
    """Base class of :class:`SAM` and :class:`FriendlySAM`; subclasses define the perturbation direction.

    Subclasses list their per-group hyperparameters in ``HYPERPARAMETERS`` (defaults: the subclass's
    ``__init__`` signature) and implement ``_validate_group``, ``_direction_(bucket, ops, directions)`` (the
    clean gradients in ``directions`` become the direction, in place, reading state only) and
    ``_update_state_(bucket, ops, directions, context)`` (runs once the direction's norm is known finite).
    ``_direction_known`` (optional) sees every direction once its norm is known: instrumentation goes there.
    Hyperparameters are checked at construction and again each time a step reads them (a scheduler may
    write them), as Python numbers: no tensor, no host sync.

    ``ascent_fraction`` (keyword, default 1.0, in ``(0, 1]``): the share of the batch whose clean gradient
    builds the perturbation (the efficient F-SAM of ``docs/efficient.md``). The optimizer only carries it:
    the step engine (``training_step`` and the adapters over it) reads ``optimizer.ascent_fraction`` and runs
    the clean pass of a perturbed step on that leading part of the batch; the base step still applies the
    whole batch's perturbed gradient. A hand-written loop slices its own clean pass.

    ``process_group`` (keyword): the ``torch.distributed`` group over which the parameters are *sharded*
    (FSDP2, ZeRO): the global norms sum the local squared norms with one all-reduce. ``None`` (default) for
    one process and DDP. ``replica_group`` (keyword): per-replica DDP with a ``GradScaler``: the replicas
    agree on skipping an overflowing step (one 1-element all-reduce per step). See ``docs/distributed.md``.
    ``model`` (keyword): the model the parameters belong to; ``step(closure)`` then keeps its BatchNorm
    running statistics out of the perturbed closure call (without it, every BatchNorm layer that runs in that
    call is frozen). See :func:`friendly_sam.optim.engine.bind_model` and docs/integrations.md.
    """

    HYPERPARAMETERS: tuple[str, ...] = ()
    _step_supports_amp_scaling = True  # GradScaler.step(opt, closure) hands itself to step(grad_scaler=)

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
        ascent_fraction: float = 1.0,
        process_group: Any = None,
        replica_group: Any = None,
        model: torch.nn.Module | None = None,
        capturable: bool = False,
        **kwargs: Any,
    ) -> None:
        check_base_class(base_optimizer, type(self).__name__)
        check_schedule(perturb_every, between, looksam_alpha, process_group)
        check_options(max_grad_norm, foreach, process_group, replica_group)
        self.ascent_fraction = check_fraction("ascent_fraction", ascent_fraction)
        if capturable:
            check_capturable(type(self).__name__, perturb_every, between, process_group, replica_group)
        self._init_capturable(capturable)
        take_migration_kwargs(kwargs)
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in self.HYPERPARAMETERS}
        defaults = {**self.hyperparameter_defaults(), **own}
        self._validate_group(defaults, where="")
        self.max_grad_norm, self.foreach = max_grad_norm, foreach
        self.process_group, self.replica_group = process_group, replica_group
        bind_model(self, model)  # step(closure) freezes its BatchNorm statistics in the perturbed call
        if "lr" in kwargs:  # before the base optimizer, which may accept nan or word it its own way
            check_lr(kwargs["lr"])
        self.checks_on_device: bool | None = None  # None: on accelerators (see _checks_on_device)
        self._saved: dict[Tensor, Tensor] = {}
        self._run = StepState()  # the step's phase, counter, ...: see phase.py (why not attributes)
        self._init_periodic(perturb_every, between, looksam_alpha)
        super().__init__(params, defaults)
        check_base_kwargs(type(self).__name__, self.own_arguments(), base_optimizer, kwargs)
        if capturable and "capturable" in inspect.signature(base_optimizer.__init__).parameters:
            # Adam/AdamW: their own sync-free step (step count on the device); torch's needs an accelerator
            if all(p.device.type != "cpu" for p in self._params()):
                kwargs.setdefault("capturable", True)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self._capturable_buffers(self._params())
        # One list of group dicts shared by both: schedulers, add_param_group and state_dict see one truth.
        self.param_groups = self.base_optimizer.param_groups
        # The base optimizer's defaults too: schedulers that cycle momentum (OneCycleLR) look for them here.
        self.defaults = {**self.base_optimizer.defaults, **defaults}
        for i, group in enumerate(self.param_groups):
            check_lr(group.get("lr", 0.0), f" in param group {i}" if len(self.param_groups) > 1 else "")

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

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        raise NotImplementedError

    def _check_hyperparameters(self) -> None:
        """Each step: the hyperparameters as a scheduler or the user may have rewritten them (Python numbers
        only: no sync). The error names the group, the value and the valid range."""
        for i, group in enumerate(self.param_groups):
            try:
                self._validate_group(group, where=f" in param group {i}")
            except ValueError as error:
                raise ValueError(
                    f"{type(self).__name__}, step {self._run.steps}: {error} (the value was changed after "
                    "construction, e.g. by a scheduler or by hand; nothing was stepped)"
                ) from None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        where = f" in param group {len(self.param_groups)}"
        self._validate_group(param_group, where=where)
        if "lr" in param_group:
            check_lr(param_group["lr"], where)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        param_group["params"] = params
        known = {id(p) for group in self.param_groups for p in group["params"]}
        check_new_params(type(self).__name__, params, known, where)
        if hasattr(self, "base_optimizer"):
            self.base_optimizer.add_param_group(param_group)  # appends to the shared list
        else:
            super().add_param_group(param_group)  # during __init__, before the base optimizer exists
        for p in params:  # allocated now, outside any compiled region (see the module docstring)
            if p.requires_grad:
                self._saved_buffer(p)

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
                bucket.saved = [self._saved_buffer(p) for p in bucket.params]
                ops = FOREACH if self._use_foreach(bucket.params) else PER_TENSOR
                if ops is FOREACH and any(hasattr(p, "to_local") for p in bucket.params):
                    ops = _FOREACH_DTENSOR
                buckets.append((bucket, ops))
        return buckets

    # ----------------------------------------------------------------- the phase, as users see it
    @property
    def is_perturbed(self) -> bool:
        """True between :meth:`first_step` and :meth:`second_step` of a perturbed step (the weights are
        ``w + e``): the loop must run the second (perturbed) pass. False after the :meth:`first_step` of an
        unperturbed step (``perturb_every > 1``), which has already stepped: skip the second pass and call
        :meth:`second_step` to finish the step."""
        return self._run.phase in (Phase.PERTURBED, Phase.SKIPPING)

    @property
    def phase(self) -> Phase:
        """The step's :class:`Phase` (read-only)."""
        return self._run.phase

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

    # ----------------------------------------------------------------- the first step
    @torch.no_grad()
    def _first_step(self, zero_grad: bool, scaler: torch.amp.GradScaler | None) -> None:
        """:meth:`first_step` without the hooks (documented there)."""
        if self._run.phase is not Phase.IDLE:
            raise RuntimeError("first_step() called twice: call second_step() to finish the step first")
        self._check_hyperparameters()
        if scaler is not None:
            if self.replica_group is not None:
                share_overflow([p.grad for p in self._params() if p.grad is not None], self.replica_group)
            unscale_once(scaler, self)
        buckets = self._buckets()
        if not self.next_step_perturbs:
            self._unperturbed_step(buckets, zero_grad, skip=scaler is not None)
            self._run.phase = Phase.STEPPED
            return
        self._looksam_keep_clean(buckets)
        directions = [
            bucket.grads if zero_grad else [g.clone() for g in bucket.grads] for bucket, _ in buckets
        ]
        # Direction (F-SAM: subtract sigma * EMA) and its norm, checked finite before any state changes.
        contexts = [self._direction_(bucket, ops, dirs) for (bucket, ops), dirs in zip(buckets, directions)]
        self._run.deferred = not self.capturable and self._checks_on_device(buckets)
        if self.capturable or self._run.deferred:  # the decisions on the device, no sync (capturable.py)
            self._capturable_perturb(buckets, directions, contexts)
            if zero_grad:
                self.zero_grad(set_to_none=True)
            self._run.open, self._run.phase = buckets, Phase.PERTURBED
            return
        total = self._global_norm([n for (_, ops), dirs in zip(buckets, directions) for n in ops.norms(dirs)])
        if not math.isfinite(total):
            if scaler is None:
                raise self._clean_gradient_error(total)
            if zero_grad:
                self.zero_grad(set_to_none=True)
            self._run.open, self._run.phase = [], Phase.SKIPPING
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
                    F.asam_direction_(ops, dirs, bucket.params)
                norms.extend(ops.norms(dirs))
            total = self._global_norm(norms)
            self._check_scales(buckets, total)
        self._perturb(buckets, directions, total)
        if zero_grad:
            self.zero_grad(set_to_none=True)
        self._run.open, self._run.phase = buckets, Phase.PERTURBED

    def _perturb(self, buckets: list[tuple[Bucket, TensorOps]], directions: list[list[Tensor]], total: float):
        """Save and perturb every bucket; if anything raises part-way, restore those already touched."""
        touched: list[tuple[Bucket, TensorOps]] = []
        try:
            for (bucket, ops), dirs in zip(buckets, directions):
                touched.append((bucket, ops))
                scale = F.perturbation_scale(bucket.group["rho"], total)
                F.perturb_(ops, bucket.params, bucket.saved, dirs, scale, bucket.group["adaptive"])
        except BaseException:
            for bucket, ops in touched:
                F.restore_(ops, bucket.params, bucket.saved)
            raise

    # ----------------------------------------------------------------- the second step
    @torch.no_grad()
    def _second_step(self, zero_grad: bool, scaler: torch.amp.GradScaler | None) -> None:
        """:meth:`second_step` without the hooks (documented there)."""
        if (
            self._run.phase is Phase.STEPPED
        ):  # first_step() already took this unperturbed step: only finish it
            self._finish_step(zero_grad)
            return
        if self._run.phase is Phase.IDLE:
            raise RuntimeError(
                "second_step() called without first_step(): compute the clean gradient, call first_step(), "
                "then the perturbed gradient, then second_step()"
            )
        if self.capturable or self._run.deferred:
            self._restore()
            if self.capturable:
                self._capturable_base_step(scaler)
            else:  # default mode on an accelerator: every check of the step read here, at once
                self._checked_base_step(scaler)
            self._finish_step(zero_grad)
            return
        skip = self._run.phase is Phase.SKIPPING
        if not skip:
            self._looksam_measure()
        self._restore()
        if not skip:
            self._clip_and_check(scaler)
            if scaler is not None:
                scaler.step(self.base_optimizer)
            else:
                self.base_optimizer.step()
        self._finish_step(zero_grad)

    def _finish_step(self, zero_grad: bool) -> None:
        self._run.steps += 1
        self._run.phase = Phase.IDLE
        # LR schedulers warn unless the optimizer's (patched) step() ran; our step is second_step.
        self._opt_called = True
        if zero_grad:
            self.zero_grad(set_to_none=True)  # capturable.py: no graph break under torch.compile

    @torch.no_grad()
    def _restore(self) -> None:
        for bucket, ops in self._run.open:
            F.restore_(ops, bucket.params, bucket.saved)
        self._run.open, self._run.phase = [], Phase.IDLE

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
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
            buf = self._saved[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buf

    def _checks_on_device(self, buckets: list[tuple[Bucket, TensorOps]]) -> bool:
        """Whether this perturbed step's checks are made on the device and read once, in second_step (one
        host sync per step), rather than read as they arise (two). ``checks_on_device`` decides; ``None``
        (default): on accelerators, where a read stalls the device's queue. On CPU a read is a memory read,
        and deciding on the device would cost an extra pass over the gradients. The options whose decisions
        live on the host (schedules, collectives, F-SAM's research options) always read on the host."""
        if self.process_group is not None or self.replica_group is not None:
            return False
        if self.perturb_every != 1 or self.between != "base":
            return False
        wanted = self.checks_on_device
        if wanted is None:  # one look per bucket (device and dtype), not per parameter
            wanted = bool(buckets) and all(b.params[0].device.type not in ("cpu", "meta") for b, _ in buckets)
        return bool(wanted) and not self._host_decisions()  # the research scan only where it matters

    def _host_decisions(self) -> bool:
        """True while an option that decides on the host is in use (F-SAM's research options)."""
        return False

    def _global_norm(self, norms: list[Tensor]) -> float:
        if self.process_group is not None:
            return sharded_norm(norms, self.process_group)
        if not norms:
            return 0.0
        return float(F.global_norm(norms))  # one host sync: it decides between perturbing and skipping
