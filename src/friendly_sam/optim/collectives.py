"""The few collectives the two-pass optimizers need under distributed training (one place for them).

* :func:`sharded_norm`: the global L2 norm when each rank holds a disjoint shard of the gradient
  (FSDP2 ``fully_shard``, ZeRO): local squared norms, one all-reduce.
* :func:`share_overflow`: per-replica DDP with a GradScaler: if any replica's gradient overflows, every
  replica records an overflow, so all skip the step alike.
* :func:`clip_sharded_`: ``max_grad_norm`` clipping with the norm of the whole sharded gradient.

Every rank of the group must call each of them (also a rank that holds no tensor).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["clip_sharded_", "collective_device", "is_process_group", "share_overflow", "sharded_norm"]


def is_process_group(group: Any) -> bool:
    """True for a ``torch.distributed`` ProcessGroup (False where torch has no distributed support)."""
    return dist.is_available() and isinstance(group, dist.ProcessGroup)


def collective_device(group: Any) -> torch.device | None:
    """Where a rank that holds no tensor puts its part of a collective: NCCL needs a CUDA tensor."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None


def sharded_norm(norms: list[Tensor], group: Any) -> float:
    """Global L2 norm from this rank's per-tensor norms: the local squared norms are summed, then ONE
    all-reduce sums them over ``group``. DTensor norms (FSDP2) count with their local part only."""
    local = [n.to_local() if hasattr(n, "to_local") else n for n in norms]
    if local:
        sq = torch.stack([n.to(local[0].device, torch.float64) for n in local]).square().sum()
    else:
        sq = torch.zeros((), dtype=torch.float64, device=collective_device(group))
    dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=group)
    return float(sq.sqrt())  # one host sync, identical on every rank: all ranks take the same decisions


def clip_sharded_(grads: list[Tensor], max_norm: float, group: Any) -> float:
    """Scale ``grads`` in place so that the norm of the whole (sharded) gradient is at most ``max_norm``,
    as ``clip_grad_norm_`` computes it; returns that norm (before clipping)."""
    total = sharded_norm([torch.linalg.vector_norm(g) for g in grads], group)
    coef = min(1.0, max_norm / (total + 1e-6))
    for g in grads:
        g.mul_(coef)
    return total


def share_overflow(grads: list[Tensor], group: Any) -> None:
    """If the gradient of any replica in ``group`` holds inf/nan, make this replica's hold one too (a nan
    in its first gradient), so that ``scaler.unscale_`` records the overflow on every replica alike.
    One all-reduce of one element."""
    local = torch.zeros((), device=grads[0].device if grads else collective_device(group))
    for g in grads:
        local = torch.maximum(local, torch.logical_not(torch.isfinite(g)).any().to(local.dtype))
    overflow = local.clone()
    dist.all_reduce(overflow, op=dist.ReduceOp.MAX, group=group)
    if bool(overflow) and not bool(local) and grads:
        grads[0].view(-1)[0] = float("nan")
