"""The process-group side of ``fsam train`` under ``torchrun``: rank, device, and the few collectives.

Launching ``fsam train`` with ``torchrun --nproc-per-node N`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`init_from_env` then joins the process group (NCCL on CUDA, gloo on CPU). Without those variables
(or with ``WORLD_SIZE=1``) it returns a single-process context that never communicates.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..data.loader import shard_bounds  # the one definition, in the lower layer

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedContext",
    "ProcessGroupError",
    "init_from_env",
    "process_group_failure",
    "shard_bounds",
]

T = TypeVar("T")
DEFAULT_TIMEOUT = 600.0  # seconds; TrainConfig.dist_timeout's default (docs/distributed.md)


class ProcessGroupError(RuntimeError):
    """The process group failed: another process ended, stopped or stopped responding (``--dist-timeout``)."""


def process_group_failure(exc: BaseException) -> ProcessGroupError | None:
    """A :class:`ProcessGroupError` with a one-line explanation when ``exc`` is a failed collective (torch's
    ``DistError``, or a ``RuntimeError`` raised inside ``torch.distributed``, gloo or NCCL), else None."""
    if isinstance(exc, ProcessGroupError):
        return exc
    files, tb = [], exc.__traceback__
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename.replace("\\", "/"))
        tb = tb.tb_next
    # raised inside torch.distributed, or by DDP's own collective (its buffer broadcast before a forward:
    # the raising frame is DDP's; a model's error inside DDP's forward is raised from the model's frames)
    inside = any("torch/distributed" in f for f in files) or bool(files and "torch/nn/parallel" in files[-1])
    text = " ".join(str(exc).split())
    # a collective inside autograd (DDP's gradient all-reduce) raises from the C++ engine: the backend
    # names itself in the message, or gloo describes the closed connection
    named = re.search(r"gloo|nccl|ProcessGroup|c10d|pair closure", text, re.IGNORECASE) is not None
    if not (isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and (inside or named))):
        return None
    timed_out = "timed out" in text.lower() or "timeout" in text.lower()
    why = (
        "another process stopped responding within --dist-timeout"
        if timed_out
        else "another process ended or failed (its own message says why)"
    )
    rank = dist.get_rank() if dist.is_initialized() else os.environ.get("RANK", "?")
    return ProcessGroupError(
        f"rank {rank}: the process group failed ({why}; {text[:160]}); every process of the run ends. "
        "Fix the cause, then continue with `fsam train --resume RUN_DIR` under torchrun"
    )


@dataclass
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``, and whether it created the
    process group (then :meth:`close` destroys it)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum numbers over ranks (float64; one all-reduce)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank, as DDP does before a
        synchronised forward; used before evaluation so that all ranks evaluate rank 0's model."""
        if not self.enabled:
            return
        for buf in module.buffers():
            dist.broadcast(buf, src=0)

    def main_first(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only; its exception is re-raised on rank 0 and reported on the others
        (as ``RuntimeError``) instead of leaving them waiting forever."""
        if not self.enabled:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as exc:  # re-raised below, after telling the other ranks
                error = exc
        flag: list[Any] = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(flag, src=0)
        if error is not None:
            raise error
        if flag[0] is not None:
            raise RuntimeError(f"rank 0 failed: {flag[0]}")
        return result

    def wrap(self, model: nn.Module, sync_bn: bool = False) -> nn.Module:
        """``DistributedDataParallel(model)`` (after ``SyncBatchNorm`` conversion with ``sync_bn``), or the
        model itself in a single process. The model's own tensors are shared, not copied."""
        if not self.enabled:
            return model
        if sync_bn:
            if self.device.type != "cuda":
                raise ValueError(
                    "--sync-bn: torch's SyncBatchNorm runs on CUDA (and XPU/HPU) only, not on "
                    f"{self.device.type}; without it each replica normalises with its local batch statistics"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def check_batches(self, num_samples: int, batch_size: int) -> None:
        """Every rank must get at least one sample of every global batch (also of a last, partial one)."""
        if not self.enabled:
            return
        last = num_samples % batch_size or batch_size
        if min(batch_size, last, num_samples) < self.world_size:
            raise ValueError(
                f"--batch-size {batch_size} over {num_samples} training images leaves a batch of "
                f"{min(batch_size, last, num_samples)} images for {self.world_size} processes; every process "
                "needs at least one image of every batch: change --batch-size or --train-subset"
            )

    def evaluate(
        self,
        evaluate_fn: Callable[..., tuple[float, float]],
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *args: Any,
    ) -> tuple[float, float]:
        """Evaluate a split sharded over the ranks and reduced: rank ``r`` runs
        ``evaluate_fn(model, images[lo:hi], labels[lo:hi], *args) -> (mean loss, accuracy %)`` on its
        contiguous part; returns the global ``(mean loss, accuracy %)`` on every rank."""
        if not self.enabled:
            return evaluate_fn(model, images, labels, *args)
        lo, hi = shard_bounds(len(labels), self.rank, self.world_size)
        loss, acc = evaluate_fn(model, images[lo:hi], labels[lo:hi], *args) if hi > lo else (0.0, 0.0)
        n = hi - lo
        loss_sum, correct, total = self.all_sum([loss * n, round(acc * n / 100.0), float(n)])
        return loss_sum / total, 100.0 * correct / total

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            # DDP wrappers left in reference cycles would otherwise be freed at interpreter exit, after the
            # group is gone, where torch/gloo can abort (exit 134); free them while the group lives.
            gc.collect()
            dist.destroy_process_group()
            self.owns_group = False

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def _resolve(name: str, local_rank: int, distributed: bool) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if distributed:  # one GPU per process: torchrun's LOCAL_RANK picks it
            device = torch.device("cuda", local_rank)
    return device


def init_from_env(
    device: str = "auto", backend: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> DistributedContext:
    """Join the process group described by torchrun's environment variables, or stay single-process.

    ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun every process uses
    ``cuda:LOCAL_RANK``). ``backend``: default NCCL for CUDA, gloo for CPU. ``timeout``: seconds one
    collective waits for the other processes (``--dist-timeout``); a process that stopped responding
    then ends the others with :class:`ProcessGroupError` instead of leaving them waiting for ever.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(_resolve(device, 0, distributed=False))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _resolve(device, local_rank, distributed=True)
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(
            backend or ("nccl" if dev.type == "cuda" else "gloo"), timeout=timedelta(seconds=timeout)
        )
        owns = True
    return DistributedContext(dev, dist.get_rank(), dist.get_world_size(), local_rank, owns)
