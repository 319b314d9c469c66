"""The engine's part of ``step(closure)``: the optimizer runs the caller's closure twice."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor

from .ascent import ascent_fraction_of
from .passes import RngState, bound_model, check_rng_mode, frozen_bn_stats_of_every_module, perturbed_pass


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
        self.rng = (
            RngState.capture() if check_rng_mode(getattr(optimizer, "rng", "fresh")) == "replay" else None
        )

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
