"""Hugging Face accelerate: one SAM/F-SAM step per update with ``accumulate()`` and fp16 scaling right.

A prepared optimizer (``AcceleratedOptimizer``) steps once per micro-batch call outside ``accumulate()``,
skips steps inside it, hides ``first_step``/``second_step``, and its ``step(closure)`` returns None; none
of that fits a two-pass optimizer. :class:`AcceleratedSAM` drives the optimizer behind it directly::

    helper = AcceleratedSAM(accelerator, model, optimizer, loss_fn)   # after accelerator.prepare(...)
    for batch in loader:
        with accelerator.accumulate(model):
            loss = helper.step(batch)        # instead of backward / optimizer.step / zero_grad
        scheduler.step()

Per update (``gradient_accumulation_steps = k``): the clean gradient of each micro-batch (through
``accelerator.backward``, i.e. loss / k and the fp16 loss scale), one ``first_step``, the perturbed
gradient of the same micro-batches under ``frozen_bn_stats``, clipping of the perturbed gradient,
``second_step``, then ``scaler.update()``: the large-batch step. Nothing here imports accelerate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..optim import frozen_bn_stats
from ._common import check_single_clip, clip_perturbed_gradient, require_two_pass


class AcceleratedSAM:
    """Runs SAM/F-SAM steps for an ``accelerate.Accelerator`` setup.

    Args:
        accelerator: the ``Accelerator`` (its ``gradient_accumulation_steps``, ``scaler`` and ``backward``
            are used).
        model: the prepared model.
        optimizer: the prepared optimizer (or the raw one): a FriendlySAM/SAM.
        loss_fn: ``loss_fn(model, batch) -> loss``; called twice per micro-batch (clean, perturbed). The
            micro-batches of an update are kept (references) until its last one.
        max_grad_norm: clip the perturbed gradient (the one the base optimizer applies) to this norm.

    Do not call ``optimizer.step()`` or ``optimizer.zero_grad()`` yourself; :meth:`step` does both.
    Checkpoints: ``accelerator.save_state``/``load_state`` carry the optimizer's EMA. Under DDP the
    clean gradients are all-reduced once per update (as ``accumulate()`` arranges) and the perturbed
    ones once, on the last micro-batch (tested in a single process only).
    """

    def __init__(
        self,
        accelerator: Any,
        model: nn.Module,
        optimizer: Any,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        max_grad_norm: float | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.model = model
        self.optimizer = require_two_pass(optimizer, "AcceleratedSAM")
        self.loss_fn = loss_fn
        check_single_clip(self.optimizer, max_grad_norm)
        self.max_grad_norm = max_grad_norm
        self._window: list[Any] = []
        self.last_grad_norm: torch.Tensor | None = None  # perturbed gradient's norm before clipping

    def step(self, batch: Any) -> torch.Tensor:
        """Clean pass of ``batch``; on the last micro-batch of an update (``accelerator.sync_gradients``),
        the whole SAM step. Returns the clean loss (detached)."""
        if not self._window:
            self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model, batch)
        self.accelerator.backward(loss)
        self._window.append(batch)
        if self.accelerator.sync_gradients:
            window, self._window = self._window, []
            self._sam_step(window)
        return loss.detach()

    def _sam_step(self, window: list[Any]) -> None:
        sam, accelerator = self.optimizer, self.accelerator
        scaler = accelerator.scaler
        scaler = scaler if scaler is not None and scaler.is_enabled() else None
        sam.first_step(zero_grad=True, scaler=scaler)
        with frozen_bn_stats(self.model):
            for i, batch in enumerate(window):
                # One gradient all-reduce for the perturbed pass (DDP): only the last backward syncs.
                last = i == len(window) - 1
                sync = contextlib.nullcontext() if last else accelerator.no_sync(self.model)
                with sync:
                    accelerator.backward(self.loss_fn(self.model, batch))
        self.last_grad_norm = clip_perturbed_gradient(sam, self.max_grad_norm, scaler)
        sam.second_step(zero_grad=True, scaler=scaler)
        if scaler is not None:
            scaler.update()


__all__ = ["AcceleratedSAM"]
