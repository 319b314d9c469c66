"""The two-pass update, written once: every entry point is a translation onto :class:`TwoPassEngine`.

One update of SAM / F-SAM over the micro-batches ``b_1..b_k`` of one optimizer step (docs/integrations.md)::

    clean pass of each b_i        (the caller's forward + backward, in its precision context)
    first_step(scaler)            unscale, direction, one global norm, w <- w + e
    perturbed pass of each b_i    the same callable, same data, under perturbed_pass(): BatchNorm running
                                  statistics frozen, the RNG replayed if asked
    clip the applied gradient     (the framework's clipping; also on unperturbed perturb_every steps)
    second_step(scaler)           restore w exactly, base step; scaler.update()

Who runs the clean pass differs (our ``training_step`` and ``AcceleratedSAM`` call the engine's
:meth:`TwoPassEngine.clean_pass`, Lightning and the HF Trainer run it themselves right after
:meth:`TwoPassEngine.add`); the perturbed pass of a micro-batch is always the callable given to ``add``,
so it sees the same data and runs in the same precision context as the clean one. ``step(closure)`` is the
one-micro-batch case, driven by the optimizer itself (:func:`perturbed_pass` with :func:`bound_model`).

Randomness (``rng``): ``"fresh"`` (default, as the official code and the hand-written loop): dropout (and
any random op inside the step) draws anew in the perturbed pass. ``"replay"``: the CPU and CUDA generator
states are captured before each micro-batch's clean pass and restored for its perturbed pass (under
``torch.random.fork_rng``, so afterwards the generators continue from where the clean passes left them):
a random augmentation or dropout mask inside the step is the same in both passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim import Optimizer

from .batchnorm import frozen_bn_stats

__all__ = [
    "RNG_MODES",
    "ClosurePasses",
    "MicroBatch",
    "RngState",
    "TwoPassEngine",
    "ascent_fraction_of",
    "ascent_size",
    "bind_model",
    "bound_model",
    "check_single_clip",
    "clip_applied_gradient",
    "frozen_bn_stats_of_every_module",
    "is_two_pass",
    "perturbed_pass",
    "slice_batch",
    "unwrap_two_pass",
]

RNG_MODES = ("fresh", "replay")


def is_two_pass(optimizer: Any) -> bool:
    """Whether ``optimizer`` takes SAM's two passes: it has callable ``first_step`` and ``second_step``
    (ours, or e.g. pytorch-optimizer's ``SAM``/``FriendlySAM``: no adapter needed)."""
    return callable(getattr(optimizer, "first_step", None)) and callable(
        getattr(optimizer, "second_step", None)
    )


def unwrap_two_pass(optimizer: Any) -> Any:
    """The two-pass optimizer behind a framework's wrapper (Lightning's ``LightningOptimizer``, accelerate's
    ``AcceleratedOptimizer``: they keep it in ``.optimizer`` or ``._optimizer``), or ``None``."""
    for _ in range(4):  # innermost first: Lightning's wrapper is itself an instance of the optimizer's class
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, Optimizer) or inner is optimizer:
            break
        optimizer = inner
    return optimizer if is_two_pass(optimizer) and hasattr(optimizer, "base_optimizer") else None


# ----------------------------------------------------------------------------- the model an optimizer knows
def bind_model(optimizer: Any, model: nn.Module | None, rng: str | None = None) -> Any:
    """Tell a two-pass optimizer which model its parameters belong to: ``step(closure)`` then runs the
    perturbed closure call with that model's BatchNorm running statistics frozen (what Composer, skorch,
    ignite and Lightning without the mixin need: they call ``step(closure)`` and know nothing of BatchNorm).
    Same as the optimizer's ``model=`` argument. ``rng="replay"``: the perturbed closure call replays the
    clean call's random draws (module docstring). Returns the optimizer."""
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (or None), got {type(model).__name__}")
    target = unwrap_two_pass(optimizer) or optimizer
    target.model = model
    if rng is not None:
        target.rng = check_rng_mode(rng)
    return optimizer


def bound_model(optimizer: Any) -> nn.Module | None:
    """The model given by :func:`bind_model` (or ``model=``), or ``None``."""
    return getattr(unwrap_two_pass(optimizer) or optimizer, "model", None)


# ----------------------------------------------------------------------------- randomness of the second pass
@dataclasses.dataclass(frozen=True)
class RngState:
    """The CPU generator state and, when CUDA is initialised, every CUDA device's."""

    cpu: Tensor
    cuda: tuple[Tensor, ...] | None

    @classmethod
    def capture(cls) -> RngState:
        cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def replayed(self) -> Iterator[None]:
        """Inside: the generators as captured; afterwards: as they were before the block."""
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(list(self.cuda))
            yield


def check_rng_mode(rng: str) -> str:
    if rng not in RNG_MODES:
        raise ValueError(
            f"invalid rng={rng!r}: use 'fresh' (the perturbed pass draws its own random numbers, as the "
            "hand-written loop) or 'replay' (it replays the clean pass's draws: same augmentation, same dropout)"
        )
    return rng


@contextlib.contextmanager
def perturbed_pass(model: nn.Module | None, rng: RngState | None = None) -> Iterator[None]:
    """The context of every perturbed forward/backward: BatchNorm running statistics of ``model`` frozen
    (batch statistics still normalise), and the random generators replayed from ``rng`` when given."""
    with frozen_bn_stats(model) if model is not None else contextlib.nullcontext():
        with rng.replayed() if rng is not None else contextlib.nullcontext():
            yield


@contextlib.contextmanager
def frozen_bn_stats_of_every_module() -> Iterator[None]:
    """:func:`frozen_bn_stats` for callers that do not know the model: every BatchNorm layer that runs a
    forward inside the block (through a global module forward pre-hook) stops updating its running
    statistics until the block ends. BatchNorm called functionally (``F.batch_norm`` with running buffers)
    is not seen: bind the model (:func:`bind_model`) instead."""
    frozen: list[_BatchNorm] = []

    def freeze(module: nn.Module, args: Any) -> None:
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            module.track_running_stats = False
            frozen.append(module)

    handle = register_module_forward_pre_hook(freeze)
    try:
        yield
    finally:
        handle.remove()
        for module in frozen:
            module.track_running_stats = True


class ClosurePasses:
    """The engine's part of ``step(closure)``, where the optimizer runs the closure (which zeroes the
    gradients and runs forward/backward of whatever the caller batches) once clean, once perturbed.

    Built right before the clean closure call: it refuses what a closure cannot do (sub-batch ascent, which
    needs the batch; gradients accumulated before ``step()``, which the perturbed call would not replay) and
    captures the generators for ``rng="replay"``. :meth:`perturbed` is the context of the second call:
    BatchNorm of the bound model frozen, or, with no model bound, of every BatchNorm that runs."""

    def __init__(self, optimizer: Any, closure: Callable[[], Any] | None = None) -> None:
        _refuse_clipping_between_calls(closure)
        if ascent_fraction_of(optimizer) < 1.0:
            raise ValueError(
                f"{type(optimizer).__name__}.step(closure) cannot run sub-batch ascent (ascent_fraction < 1): the "
                "closure hides the batch. Use friendly_sam.train.training_step, an adapter (AcceleratedSAM, "
                "SAMTrainer), or first_step()/second_step() around your own passes"
            )
        _refuse_accumulated_gradient(optimizer)
        self.model = bound_model(optimizer)
        self.rng = RngState.capture() if check_rng_mode(getattr(optimizer, "rng", "fresh")) == "replay" else None

    def perturbed(self) -> contextlib.AbstractContextManager[None]:
        if self.model is not None:
            return perturbed_pass(self.model, self.rng)
        return _stacked(frozen_bn_stats_of_every_module(), perturbed_pass(None, self.rng))

    @staticmethod
    def finished(optimizer: Any) -> None:
        """After the step: remember the gradient tensors it leaves (the next step tells them from new ones)."""
        optimizer._engine_left_grads = {id(p): p.grad for p in _params(optimizer) if p.grad is not None}


@contextlib.contextmanager
def _stacked(*contexts: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def _params(optimizer: Any) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _refuse_clipping_between_calls(closure: Any) -> None:
    """Lightning's automatic optimisation without :class:`SAMLightningMixin` wraps the closure in its
    precision plugin's ``_wrap_closure``, which clips after *each* call: the clean gradient too, which the
    direction (F-SAM: its EMA) must see unclipped. Refuse it (recognised without importing Lightning)."""
    if not isinstance(closure, functools.partial) or getattr(closure.func, "__name__", "") != "_wrap_closure":
        return
    module = closure.args[0] if closure.args else None
    trainer = getattr(module, "_trainer", None)
    if trainer is None or not getattr(module, "automatic_optimization", False):
        return
    if getattr(trainer, "gradient_clip_val", None):
        raise ValueError(
            "Lightning's gradient_clip_val without SAMLightningMixin clips the clean gradient as well as the "
            "applied one (the sharpness direction would be computed from a clipped gradient): add "
            "friendly_sam.integrations.lightning.SAMLightningMixin to the LightningModule's bases, or pass "
            "max_grad_norm= to the optimizer instead of gradient_clip_val"
        )


def _refuse_accumulated_gradient(optimizer: Any) -> None:
    """A gradient present before ``step(closure)`` that the previous step did not leave was accumulated
    by the caller (Lightning's ``accumulate_grad_batches`` without the mixin, ...): the clean direction would
    include it but the perturbed call would replay only the closure's batch. Identity checks only: no sync."""
    left = getattr(optimizer, "_engine_left_grads", None)
    if left is None:
        return  # the first step: the optimizer's own (value) check covers it
    if any(p.grad is not None and left.get(id(p)) is not p.grad for p in _params(optimizer)):
        raise RuntimeError(
            f"{type(optimizer).__name__}.step(closure) found gradients computed since the last step, outside "
            "the closure (accumulated micro-batches?): the perturbed closure call would replay only the closure's "
            "own batch. With Lightning use SAMLightningMixin (accumulate_grad_batches supported); elsewhere call "
            "opt.zero_grad() before step(closure), or first_step()/second_step() around your own passes"
        )


# ----------------------------------------------------------------------------- sub-batch ascent
def ascent_fraction_of(optimizer: Any, given: float | None = None) -> float:
    """The ascent fraction of an update: ``given`` (an entry point's own argument) or the optimizer's
    ``ascent_fraction`` attribute (default 1.0); both set and different is an error."""
    own = getattr(unwrap_two_pass(optimizer) or optimizer, "ascent_fraction", None)
    if given is not None and own is not None and float(own) != 1.0 and float(given) != float(own):
        raise ValueError(
            f"ascent_fraction={given!r} conflicts with the optimizer's ascent_fraction={own!r}: set it in one place"
        )
    fraction = float(given if given is not None else own if own is not None else 1.0)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"ascent_fraction={fraction!r}: it must be in (0, 1]")
    return fraction


def ascent_size(batch_size: int, fraction: float) -> int:
    """Samples of a batch of ``batch_size`` the clean pass of sub-batch ascent runs on."""
    return max(1, math.ceil(fraction * batch_size))


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, Tensor):
        return len(batch) if batch.dim() else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = _batch_size(value)
        if size is not None:
            return size
    return None


def slice_batch(batch: Any, fraction: float) -> Any:
    """The first ``ascent_size(n, fraction)`` samples of a batch: tensors (sliced along dim 0) in any nesting
    of tuples, lists and dicts; other leaves are kept. Refuses a batch with no tensor or tensors of
    different lengths (the engine cannot know what a sample is)."""
    size = _batch_size(batch)
    if size is None:
        raise TypeError(
            f"ascent_fraction < 1 needs a batch of tensors to slice; got {type(batch).__name__}. "
            "Use ascent_fraction=1, or pass the batch as tensors (or tuples/lists/dicts of them)"
        )
    n = ascent_size(size, fraction)

    def cut(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim():
            if len(value) != size:
                raise ValueError(
                    f"ascent_fraction < 1: the batch holds tensors of {size} and {len(value)} samples; "
                    "the engine cannot tell which dimension is the batch"
                )
            return value[:n]
        if isinstance(value, Mapping):
            return type(value)({k: cut(v) for k, v in value.items()})
        if isinstance(value, (list, tuple)) and not isinstance(value, str):
            items = [cut(v) for v in value]
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        return value

    return cut(batch)


# ----------------------------------------------------------------------------- clipping the applied gradient
def check_single_clip(sam: Any, max_norm: float | None) -> None:
    """Refuse clipping in two places (the optimizer's ``max_grad_norm`` and the framework's), before any
    step runs: the second clip would unscale an fp16 gradient twice."""
    if max_norm and max_norm > 0 and getattr(sam, "max_grad_norm", None) is not None:
        raise ValueError(
            f"the applied gradient would be clipped twice: the optimizer has max_grad_norm="
            f"{sam.max_grad_norm} and the framework clips to {max_norm}; set one of them only"
        )


def _grad_params(optimizer: Any) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def clip_applied_gradient(
    sam: Any, max_norm: float | None, scaler: torch.amp.GradScaler | None
) -> Tensor:
    """Clip the perturbed gradient (the one the base optimizer applies) to ``max_norm`` (no clipping for
    None/0) before ``second_step``; returns its global norm before clipping (unscaled). With a scaler and
    clipping, the gradient is unscaled first, recorded against the base optimizer, exactly as
    ``second_step(scaler=...)`` expects (it then does not unscale again)."""
    params = _grad_params(sam)
    if not max_norm or max_norm <= 0:
        if not params:
            return torch.zeros(())
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        return norm / scaler.get_scale() if scaler is not None else norm
    check_single_clip(sam, max_norm)
    if scaler is not None:
        scaler.unscale_(sam.base_optimizer)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


@contextlib.contextmanager
def _optimizer_clips(sam: Any, max_norm: float | None) -> Iterator[None]:
    """The framework's clip value as the optimizer's own ``max_grad_norm`` for one unperturbed step: the
    optimizer then clips the clean gradient it applies, after unscaling it (``perturb_every > 1``)."""
    if not max_norm or max_norm <= 0:
        yield
        return
    check_single_clip(sam, max_norm)
    sam.max_grad_norm = float(max_norm)
    try:
        yield
    finally:
        sam.max_grad_norm = None


def _resolve_clip(sam: Any, max_norm: float | None) -> float | None:
    """The clip value the engine applies: the framework's, unless the optimizer clips itself (its own
    ``max_grad_norm``; the same value given to both is the optimizer's alone, a different one an error)."""
    if not max_norm or max_norm <= 0:
        return None
    own = getattr(sam, "max_grad_norm", None)
    if own is not None and float(own) == float(max_norm):
        return None
    check_single_clip(sam, max_norm)
    return float(max_norm)


# ----------------------------------------------------------------------------- the engine
@dataclasses.dataclass
class MicroBatch:
    """One micro-batch of the open update: its perturbed forward/backward (the same callable, on the same
    data, as its clean pass) and, with ``rng="replay"``, the generator states before its clean pass."""

    perturbed: Callable[[], Any]
    rng: RngState | None = None


class TwoPassEngine:
    """Runs the updates of one optimizer, one at a time (see the module docstring for the protocol).

    Args:
        optimizer: a two-pass optimizer (:func:`is_two_pass`; a framework's wrapper around ours is
            unwrapped), or a plain one (one pass, clip, step).
        model: the model whose BatchNorm running statistics are frozen in the perturbed passes (default:
            the one bound to the optimizer with ``model=`` / :func:`bind_model`).
        scaler: the fp16 ``GradScaler`` that scaled the losses (both passes are unscaled, an overflow skips
            the update).
        max_grad_norm: the framework's clipping (``gradient_clip_val``, ``args.max_grad_norm``, ...): the
            gradient the base optimizer applies is clipped to it on every step, perturbed or not.
        rng: ``"fresh"`` (default) or ``"replay"`` (module docstring).
        ascent_fraction: sub-batch ascent; default the optimizer's ``ascent_fraction`` (see
            :meth:`clean_view`).
        update_scaler: call ``scaler.update()`` after each update (False where the framework does).
        perturbed_sync: ``perturbed_sync(last)`` -> the context of each perturbed micro-batch (DDP: skip the
            all-reduce on all but the last one).
        measure_norm: record the applied gradient's norm before clipping in :attr:`last_grad_norm` also
            when nothing is clipped (for logging).
    """

    def __init__(
        self,
        optimizer: Any,
        *,
        model: nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
        max_grad_norm: float | None = None,
        rng: str = "fresh",
        ascent_fraction: float | None = None,
        update_scaler: bool = True,
        perturbed_sync: Callable[[bool], contextlib.AbstractContextManager[Any]] | None = None,
        measure_norm: bool = False,
    ) -> None:
        self.optimizer = optimizer
        self.sam = unwrap_two_pass(optimizer) or (optimizer if is_two_pass(optimizer) else None)
        self.model = model if model is not None else bound_model(optimizer)
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.max_grad_norm = _resolve_clip(self.sam, max_grad_norm) if self.sam is not None else max_grad_norm
        self.rng = check_rng_mode(rng)
        self.ascent_fraction = ascent_fraction_of(optimizer, ascent_fraction)
        self.update_scaler = update_scaler
        self.perturbed_sync = perturbed_sync
        self.measure_norm = measure_norm
        self.window: list[MicroBatch] = []
        self.last_grad_norm: Tensor | None = None

    @property
    def perturbs(self) -> bool:
        """Whether the open (or next) update runs the perturbed pass (False for plain optimizers and on
        the unperturbed steps of ``perturb_every > 1``)."""
        return self.sam is not None and bool(getattr(self.sam, "next_step_perturbs", True))

    def clean_view(self, batch: Any) -> Any:
        """The part of ``batch`` the clean pass runs on: its first ``ascent_fraction`` on a perturbed
        update of sub-batch ascent (:func:`slice_batch`), else the whole batch."""
        if self.ascent_fraction >= 1.0 or not self.perturbs:
            return batch
        return slice_batch(batch, self.ascent_fraction)

    def add(self, perturbed: Callable[[], Any]) -> MicroBatch:
        """Open (or extend) the update with a micro-batch whose clean pass runs right after this call (by
        the caller, or by :meth:`clean_pass`); ``perturbed()`` runs its perturbed pass in :meth:`update`."""
        replay = self.rng == "replay" and self.sam is not None
        micro = MicroBatch(perturbed, RngState.capture() if replay else None)
        self.window.append(micro)
        return micro

    def clean_pass(
        self,
        clean: Callable[[], Any],
        perturbed: Callable[[], Any] | None = None,
        context: contextlib.AbstractContextManager[Any] | None = None,
    ) -> Any:
        """:meth:`add` a micro-batch and run its clean forward/backward ``clean()`` now (inside ``context``,
        e.g. DDP's ``no_sync()``); ``perturbed`` defaults to ``clean``. Returns what ``clean()`` returns."""
        self.add(perturbed or clean)
        with context or contextlib.nullcontext():
            return clean()

    def update(self, before_apply: Callable[[], Any] | None = None) -> Tensor | None:
        """Finish the open update (after the clean passes of all its micro-batches): ``first_step``, the
        perturbed passes, clipping of the applied gradient, ``second_step``, ``scaler.update()``. Returns
        the applied gradient's norm before clipping when it was measured (else None). ``before_apply()``
        runs once the applied gradient is in ``p.grad``, before it is clipped (a framework's
        ``on_before_optimizer_step`` hooks)."""
        window, self.window = self.window, []
        if self.sam is None:
            return self._plain_update(before_apply)
        sam, scaler = self.sam, self.scaler
        step_kwargs = {"zero_grad": True, **({"scaler": scaler} if scaler is not None else {})}
        norm = None
        if not self.perturbs:  # perturb_every: first_step takes the base step on the clean gradient
            if before_apply is not None:
                before_apply()
            if self.measure_norm:
                norm = clip_applied_gradient(sam, None, scaler)
            with _optimizer_clips(sam, self.max_grad_norm):
                sam.first_step(**step_kwargs)
        else:
            sam.first_step(**step_kwargs)
        if getattr(sam, "is_perturbed", True):  # other libraries' optimizers always perturb
            for i, micro in enumerate(window):
                sync = self.perturbed_sync(i == len(window) - 1) if self.perturbed_sync else None
                with sync or contextlib.nullcontext(), perturbed_pass(self.model, micro.rng):
                    micro.perturbed()
            if before_apply is not None:
                before_apply()
            if self.max_grad_norm or self.measure_norm:
                norm = clip_applied_gradient(sam, self.max_grad_norm, scaler)
        sam.second_step(**step_kwargs)
        if scaler is not None and self.update_scaler:
            scaler.update()
        self.last_grad_norm = norm
        return norm

    def _plain_update(self, before_apply: Callable[[], Any] | None) -> Tensor | None:
        optimizer, scaler, norm = self.optimizer, self.scaler, None
        if before_apply is not None:
            before_apply()
        if self.max_grad_norm:
            if scaler is not None:
                scaler.unscale_(optimizer)
            params = self.model.parameters() if self.model is not None else _grad_params(optimizer)
            norm = nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            if self.update_scaler:
                scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.last_grad_norm = norm
        return norm
