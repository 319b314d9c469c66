"""Count what DDP all-reduces: a comm hook that tallies bucket bytes (for benchmarks and checks)."""

from __future__ import annotations

from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

__all__ = ["AllReduceCounter"]


class AllReduceCounter:
    """Register on a DDP model; ``bytes``/``calls`` grow with every gradient bucket DDP all-reduces.

    It wraps DDP's default all-reduce hook, so training is unchanged. Buffer broadcasts (BatchNorm
    statistics) and other collectives are not counted.
    """

    def __init__(self, model: DistributedDataParallel) -> None:
        self.bytes = 0
        self.calls = 0
        model.register_comm_hook(model.process_group, self._hook)

    def reset(self) -> None:
        self.bytes = self.calls = 0

    def _hook(self, state, bucket):  # no annotations: DDP checks them against its own types
        buf = bucket.buffer()
        self.bytes += buf.numel() * buf.element_size()
        self.calls += 1
        return default_hooks.allreduce_hook(state, bucket)
