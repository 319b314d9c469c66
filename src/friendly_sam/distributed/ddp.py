"""SAM / F-SAM steps under ``DistributedDataParallel`` with two defined perturbation modes.

``per-replica`` (default; SAM's "m-sharpness"): the first forward AND backward run inside
``ddp_model.no_sync()``, so every replica perturbs with the gradient of its own local batch and keeps
its own F-SAM EMA; the second (perturbed) gradient is all-reduced by DDP as usual, so the base step,
and hence the parameters, stay identical on every replica. One gradient all-reduce per step.

``synchronized``: both passes are ordinary DDP passes. The first gradient is all-reduced (averaged),
so all replicas perturb with the global-batch gradient and hold identical EMAs: the step equals a
single-process step over the global batch (without BatchNorm, or with SyncBatchNorm). Two gradient
all-reduces per step.

The common hand-written recipe puts only ``backward()`` under ``no_sync()``; DDP decides whether to
synchronise in *forward*, so that silently all-reduces the first gradient. Here the context wraps both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..optim import TwoPassOptimizer
from ..train.step import LossFn, training_step

PER_REPLICA = "per-replica"
SYNCHRONIZED = "synchronized"
PERTURBATION_MODES = (PER_REPLICA, SYNCHRONIZED)

__all__ = ["PERTURBATION_MODES", "PER_REPLICA", "SYNCHRONIZED", "check_mode", "ddp_training_step"]


def check_mode(mode: str) -> str:
    if mode not in PERTURBATION_MODES:
        raise ValueError(
            f"unknown perturbation mode {mode!r}; choose one of: {', '.join(PERTURBATION_MODES)}"
        )
    return mode


def ddp_training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    mode: str = PER_REPLICA,
    loss_fn: LossFn = nn.functional.cross_entropy,
    global_batch_size: int | None = None,
    bf16: bool = False,
    max_grad_norm: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One training iteration of a DDP-wrapped model; returns the local clean-pass ``(loss, logits)``.

    Built on :func:`friendly_sam.train.step.training_step` (BatchNorm statistics frozen in the second
    pass, clipping as documented there), it only chooses what runs under ``model.no_sync()``:

    * ``mode="per-replica"``: the first forward and backward (each replica's own perturbation and EMA);
    * ``mode="synchronized"``: nothing (both gradients are all-reduced).

    Plain optimizers (SGD, AdamW) and models not wrapped in DDP take the ordinary step in both modes.

    ``global_batch_size``: the size of the global batch whose slices the replicas hold. With it, the
    local loss is weighted by ``len(y) * world_size / global_batch_size`` so that DDP's average of the
    replicas' gradients is the gradient of the mean loss over the global batch even when the slices have
    unequal sizes (a last, partial batch); without it every replica's mean loss counts equally. The
    returned loss is the unweighted local mean. ``loss_fn`` must reduce by the mean.
    """
    check_mode(mode)
    is_ddp = isinstance(model, DistributedDataParallel)
    context: Any = None
    if is_ddp and mode == PER_REPLICA and isinstance(optimizer, TwoPassOptimizer):
        context = model.no_sync()
    weight = 1.0
    if is_ddp and global_batch_size is not None:
        world_size = torch.distributed.get_world_size(model.process_group)
        weight = len(y) * world_size / global_batch_size
    step_loss_fn = loss_fn
    if weight != 1.0:

        def step_loss_fn(logits: Tensor, target: Tensor) -> Tensor:
            return loss_fn(logits, target) * weight

    loss, logits = training_step(
        model,
        optimizer,
        x,
        y,
        loss_fn=step_loss_fn,
        bf16=bf16,
        max_grad_norm=max_grad_norm,
        first_pass_context=context,
    )
    return (loss / weight if weight != 1.0 else loss), logits
