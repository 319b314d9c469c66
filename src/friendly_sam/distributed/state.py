"""Per-replica optimizer state in checkpoints.

In ``per-replica`` mode the replicas' F-SAM EMAs differ (each averages its own local-batch gradients),
while parameters and the base optimizer's state (momentum, Adam moments) are identical. A checkpoint
written by rank 0 alone would therefore resume every replica with rank 0's EMA, and the resumed run
would differ from the uninterrupted one. :func:`gather_replica_states` collects every rank's own state
(the two-pass wrapper's per-parameter tensors; F-SAM: ``ema``) so that rank 0 can store them all, and
:func:`load_replica_state` gives each rank its own back.

Changing the world size: rank ``r`` takes the state saved by rank ``r % saved_world_size`` (each saved
EMA is a valid estimate of the full gradient; with fewer ranks the extra ones are dropped, with more
they are reused).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..optim import TwoPassOptimizer

__all__ = ["gather_replica_states", "load_replica_state", "replica_state"]


def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def replica_state(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, Tensor]]:
    """This rank's own per-parameter tensors of a two-pass optimizer (CPU copies), keyed by parameter
    index; ``{}`` for plain optimizers and for SAM (no state of its own)."""
    if not isinstance(optimizer, TwoPassOptimizer):
        return {}
    out: dict[int, dict[str, Tensor]] = {}
    for i, p in enumerate(_params(optimizer)):
        own = {
            k: v.detach().to("cpu", copy=True)
            for k, v in optimizer.state.get(p, {}).items()
            if torch.is_tensor(v)
        }
        if own:
            out[i] = own
    return out


def gather_replica_states(
    optimizer: torch.optim.Optimizer, group: Any = None
) -> list[dict[int, dict[str, Tensor]]]:
    """Every rank's :func:`replica_state`, in rank order (a collective: all ranks of ``group`` call it).

    Returns ``[]`` without communicating when the optimizer keeps no state of its own."""
    if not isinstance(optimizer, TwoPassOptimizer) or not any(
        optimizer.state.get(p) for p in _params(optimizer)
    ):
        return []
    states: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, replica_state(optimizer), group=group)
    return states


def load_replica_state(
    optimizer: torch.optim.Optimizer, states: list[dict[int, dict[str, Tensor]]], rank: int
) -> None:
    """Overwrite this rank's own optimizer state with ``states[rank % len(states)]`` (after the usual
    ``optimizer.load_state_dict``); nothing happens for an empty list."""
    if not states:
        return
    params = _params(optimizer)
    for i, own in states[rank % len(states)].items():
        if i >= len(params):
            raise ValueError(f"replica state names parameter {i}, the optimizer has {len(params)}")
        target = optimizer.state[params[i]]
        for key, value in own.items():
            if key in target and torch.is_tensor(target[key]):
                target[key].copy_(value)
            else:
                target[key] = value.to(params[i].device)
