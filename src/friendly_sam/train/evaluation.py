"""Evaluation: loss and accuracy of a model over a loader of ready batches, summed over ranks."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..data import BatchSchedule
from ..distributed import DistributedContext
from .config import TrainConfig
from .step import autocast_context

__all__ = ["evaluate", "evaluate_batches"]


@torch.no_grad()
def evaluate_batches(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], cfg: TrainConfig, device: torch.device
) -> tuple[float, int, int]:
    """Summed cross-entropy, correct predictions and images over ready ``(x, y)`` batches, in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        if len(y) == 0:  # a rank's empty share of a small last batch
            continue
        x, y = x.to(device), y.to(device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, cfg.bf16):
            logits = model(x)
        total_loss += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    model.train(was_training)
    return total_loss, correct, seen


def evaluate(
    model: nn.Module,
    loader: BatchSchedule,
    cfg: TrainConfig,
    device: torch.device,
    ctx: DistributedContext | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy (%) over every batch of ``loader`` (epoch 0: evaluation loaders have a fixed
    order), summed over all ranks with ``ctx`` (each rank holds its part of every batch)."""
    loader.set_epoch(0)
    sums = list(evaluate_batches(model, loader, cfg, device))
    total_loss, correct, seen = ctx.all_sum(sums) if ctx is not None else sums
    return total_loss / max(1, seen), 100.0 * correct / max(1, seen)
