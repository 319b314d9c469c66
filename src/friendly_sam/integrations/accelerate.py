"""Hugging Face accelerate: one SAM/F-SAM step per update with ``accumulate()`` and fp16 scaling right.

A prepared optimizer (``AcceleratedOptimizer``) steps once per micro-batch call outside ``accumulate()``,
skips steps inside it, hides ``first_step``/``second_step``, and its ``step(closure)`` returns None; none
of that fits a two-pass optimizer. :class:`AcceleratedSAM` drives the optimizer behind it directly::

    helper = AcceleratedSAM(accelerator, model, optimizer, loss_fn, max_grad_norm=1.0)
    for batch in loader:
        with accelerator.accumulate(model):
            loss = helper.step(batch)        # instead of backward / clip / optimizer.step / zero_grad
        scheduler.step()

Per update (``gradient_accumulation_steps = k``), by :class:`~friendly_sam.optim.engine.TwoPassEngine`:
the clean gradient of each micro-batch (through ``accelerator.backward``, i.e. loss / k and the fp16 loss
scale), one ``first_step``, the perturbed gradient of the same micro-batches under ``frozen_bn_stats``,
clipping of the applied gradient (every step, ``perturb_every`` included), ``second_step``, then
``scaler.update()``: the large-batch step. Nothing here imports accelerate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from ..optim.engine import TwoPassEngine
from ._common import require_two_pass


class AcceleratedSAM:
    """Runs SAM/F-SAM steps for an ``accelerate.Accelerator`` setup.

    Args:
        accelerator: the ``Accelerator`` (its ``gradient_accumulation_steps``, ``scaler`` and ``backward``
            are used).
        model: the prepared model.
        optimizer: the prepared optimizer (or the raw one): a FriendlySAM/SAM.
        loss_fn: ``loss_fn(model, batch) -> loss``; called twice per micro-batch (clean, perturbed). The
            micro-batches of an update are kept (references) until its last one.
        max_grad_norm: clip the applied gradient (the perturbed one; on unperturbed ``perturb_every``
            steps the clean one) to this norm. accelerate's own ``accelerator.clip_grad_norm_`` after
            :meth:`step` has nothing left to clip: it raises a ValueError naming this argument.
        ascent_fraction: sub-batch ascent (default: the optimizer's): the clean pass of each micro-batch runs
            on the first ``ceil(f * n)`` samples of its tensors.
        rng: ``"fresh"`` (default: the perturbed pass draws its own random numbers) or ``"replay"``.

    Call :meth:`step` inside ``with accelerator.accumulate(model):`` when ``gradient_accumulation_steps >
    1`` (it decides where an update ends; outside it, a RuntimeError says so). Do not call
    ``optimizer.step()`` or ``optimizer.zero_grad()`` yourself. Checkpoints: ``accelerator.save_state`` /
    ``load_state`` carry the optimizer's EMA. DDP (multi-process): *synchronized* mode: the clean
    gradients are all-reduced once per update (as ``accumulate()`` arranges), so every replica perturbs
    with the global gradient, and the perturbed ones once, on the last micro-batch.
    """

    def __init__(
        self,
        accelerator: Any,
        model: nn.Module,
        optimizer: Any,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        max_grad_norm: float | None = None,
        ascent_fraction: float | None = None,
        rng: str = "fresh",
    ) -> None:
        self.accelerator = accelerator
        self.model = model
        self.optimizer = require_two_pass(optimizer, "AcceleratedSAM")
        self.loss_fn = loss_fn
        self.engine = TwoPassEngine(
            self.optimizer,
            model=model,
            max_grad_norm=max_grad_norm,
            rng=rng,
            ascent_fraction=ascent_fraction,
            perturbed_sync=self._perturbed_sync,
            measure_norm=True,
        )
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm: torch.Tensor | None = None  # applied gradient's norm before clipping
        self._accumulate_step: int | None = None
        _guard_clipping(accelerator)

    def step(self, batch: Any) -> torch.Tensor:
        """Clean pass of ``batch``; on the last micro-batch of an update (``accelerator.sync_gradients``),
        the whole SAM step. Returns the clean loss (detached)."""
        self._check_inside_accumulate()
        engine, accelerator = self.engine, self.accelerator
        accelerator._friendly_sam_stepped = False
        if not engine.window:
            self.optimizer.zero_grad(set_to_none=True)
        loss = engine.clean_pass(
            partial(self._forward_backward, engine.clean_view(batch)),
            perturbed=partial(self._forward_backward, batch),
        )
        if accelerator.sync_gradients:
            scaler = accelerator.scaler
            engine.scaler = scaler if scaler is not None and scaler.is_enabled() else None
            self.last_grad_norm = engine.update()
            accelerator._friendly_sam_stepped = True
        return loss.detach()

    def _forward_backward(self, batch: Any) -> torch.Tensor:
        loss = self.loss_fn(self.model, batch)
        self.accelerator.backward(loss)
        return loss

    def _perturbed_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        # One gradient all-reduce for the perturbed pass (DDP): only the last backward syncs.
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)

    def _check_inside_accumulate(self) -> None:
        """With accumulation, ``accelerator.accumulate()`` advances ``accelerator.step`` on every micro-batch
        (and resets it at the end of a prepared dataloader); the same value twice (or 0 on the first call)
        means step() runs outside it, where every call would end an update."""
        accelerator = self.accelerator
        if accelerator.gradient_accumulation_steps <= 1:
            return
        current = accelerator.step
        end = getattr(accelerator.gradient_state, "end_of_dataloader", False)
        outside = current == 0 if self._accumulate_step is None else current == self._accumulate_step
        if outside and not end:
            raise RuntimeError(
                f"AcceleratedSAM.step() outside `with accelerator.accumulate(model):` with "
                f"gradient_accumulation_steps={accelerator.gradient_accumulation_steps}: every call would take "
                "an optimizer step. Call it inside accumulate(), which decides where an update ends"
            )
        self._accumulate_step = current


def _guard_clipping(accelerator: Any) -> None:
    """accelerate's idiom ``if accelerator.sync_gradients: accelerator.clip_grad_norm_(...)`` after
    :meth:`AcceleratedSAM.step` would clip a gradient that was already applied (and is gone): refuse it."""
    if getattr(accelerator, "_friendly_sam_guarded", False):
        return
    for name in ("clip_grad_norm_", "clip_grad_value_"):
        original = getattr(accelerator, name)

        def guarded(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            if getattr(accelerator, "_friendly_sam_stepped", False):
                raise ValueError(
                    f"accelerator.{_name}() after AcceleratedSAM.step(): the update was already applied "
                    "(its gradient is gone), so this would clip nothing. Pass max_grad_norm= to AcceleratedSAM "
                    "instead: it clips the applied gradient of every update"
                )
            return _original(*args, **kwargs)

        setattr(accelerator, name, guarded)
    accelerator._friendly_sam_guarded = True


__all__ = ["AcceleratedSAM"]
