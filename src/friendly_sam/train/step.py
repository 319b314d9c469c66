"""One training iteration for any of our optimizers: plain (SGD/AdamW) or two-pass (SAM, ASAM, F-SAM)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..optim import TwoPassOptimizer, frozen_bn_stats

LossFn = Callable[[Tensor, Tensor], Tensor]


def autocast_context(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on the model's device, or nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn = nn.functional.cross_entropy,
    bf16: bool = False,
    max_grad_norm: float | None = None,
    first_pass_context: contextlib.AbstractContextManager[Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """Forward/backward (twice for two-pass optimizers) and the optimizer step; returns (loss, logits).

    The returned loss and logits are those of the clean first pass. For two-pass optimizers the second
    forward runs under :func:`frozen_bn_stats`, so BatchNorm running statistics are updated only by the
    clean pass. ``first_pass_context`` wraps the first forward/backward (the DDP helper passes
    ``model.no_sync()`` there for per-replica perturbations). ``max_grad_norm`` clips plain optimizers;
    two-pass optimizers clip themselves (their own ``max_grad_norm``).
    """
    device = x.device
    with first_pass_context or contextlib.nullcontext():
        with autocast_context(device, bf16):
            logits = model(x)
            loss = loss_fn(logits, y)
        loss.backward()
    if isinstance(optimizer, TwoPassOptimizer):
        optimizer.first_step(zero_grad=True)
        with frozen_bn_stats(model), autocast_context(device, bf16):
            perturbed_loss = loss_fn(model(x), y)
        perturbed_loss.backward()
        optimizer.second_step(zero_grad=True)
    else:
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), logits.detach()
