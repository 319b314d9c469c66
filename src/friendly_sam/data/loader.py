"""The batch schedule shared by every loader, and the resumable mini-batch loader over in-memory tensors.

:class:`TensorBatchLoader` replaces ``torch.utils.data.DataLoader`` for data sets that fit in
memory: a batch is one ``index_select`` plus one vectorised augmentation call, with no worker
processes and no per-image Python work.

Reproducibility contract: the order of epoch ``e`` is a pure function of ``(seed, e)`` and the
augmentation of batch ``b`` of epoch ``e`` a pure function of ``(seed, e, b)``. Hence a run
resumed at batch ``k`` of an epoch (``set_epoch(e, start_batch=k)`` or ``iter_from(k)``) sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch

from .augment import Augmentation

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; annotations only

__all__ = [
    "BatchSchedule",
    "ScheduleOptions",
    "TensorBatchLoader",
    "augment_generator",
    "derive_seed",
    "epoch_permutation",
    "shard_bounds",
]

_PERMUTATION_STREAM = 0
_AUGMENT_STREAM = 1


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (numpy ``SeedSequence``).

    Used so that e.g. ``(seed, epoch)`` and ``(seed, epoch + 1)`` give unrelated streams, unlike
    ``seed + epoch`` which would make run ``seed=1`` replay run ``seed=0`` shifted by one epoch.
    """
    entropy = [int(k) % (1 << 64) for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """Sample order of epoch ``epoch`` (CPU int64): a pure function of ``(seed, epoch)``.

    The one definition of the order shared by every loader (in memory and streaming), so the same
    seed gives the same batches whichever path loads the images. The identity without shuffling.
    """
    if not shuffle:
        return torch.arange(num_samples)
    return torch.randperm(num_samples, generator=_generator(seed, epoch, _PERMUTATION_STREAM))


def augment_generator(seed: int, epoch: int, batch_index: int) -> torch.Generator:
    """The generator of batch ``batch_index`` of epoch ``epoch``'s augmentation (CPU)."""
    return _generator(seed, epoch, batch_index, _AUGMENT_STREAM)


def shard_bounds(size: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of part ``index`` of ``count`` contiguous parts of ``size`` rows
    (sizes as ``torch.tensor_split``: the first ``size % count`` parts hold one row more)."""
    q, r = divmod(size, count)
    lo = index * q + min(index, r)
    return lo, lo + q + (1 if index < r else 0)


class ScheduleOptions(TypedDict, total=False):
    """The keyword options of :class:`BatchSchedule`, passed through unchanged by every loader (their
    defaults and checks live in ``BatchSchedule.__init__`` alone)."""

    shuffle: bool
    drop_last: bool
    augment: Augmentation | None
    seed: int
    device: torch.device | str | None
    shard: tuple[int, int]


class BatchSchedule:
    """Which samples form batch ``b`` of epoch ``e``, and which generator augments it: the part
    shared by every loader (:class:`TensorBatchLoader` in memory, ``StreamingBatchLoader`` from
    files). Subclasses say how the images of a batch are fetched (``_batch``).

    Args: as :class:`TensorBatchLoader` without ``images`` / ``labels``; ``num_samples`` is the
    size of the data set.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augmentation | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.num_samples = int(num_samples)
        index, count = shard
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if augment is not None and not isinstance(augment, Augmentation):
            raise TypeError(
                f"augment must follow the Augmentation protocol (is_random, sample, apply), e.g. a BatchAugment; "
                f"got {type(augment).__name__}"
            )
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = augment
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else None
        self.shard = (index, count)
        self.epoch = 0
        self.start_batch = 0
        self._perm_cache: tuple[tuple[int, int], torch.Tensor] | None = None

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (order and augmentation) and the batch the next iteration starts at."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._check_start(start_batch)
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _check_start(self, batch_index: int) -> None:
        if not 0 <= batch_index <= len(self):
            raise ValueError(f"batch index must be in [0, {len(self)}], got {batch_index}")

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """Sample order of an epoch (CPU int64); the identity when ``shuffle`` is off."""
        e = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return torch.arange(self.num_samples)
        if self._perm_cache is None or self._perm_cache[0] != (self.seed, e):
            self._perm_cache = ((self.seed, e), epoch_permutation(self.num_samples, self.seed, e))
        return self._perm_cache[1]

    def _shard_rows(self, size: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of a global batch of ``size`` rows that this loader's ``shard`` delivers."""
        return shard_bounds(size, *self.shard)

    def _batch_indices(self, order: torch.Tensor, batch_index: int) -> torch.Tensor:
        """Batch ``batch_index``'s part of an epoch's sample order ``order``."""
        return order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, epoch = self.start_batch, self.epoch
        yield from self._iterate(epoch, start)
        # Completed pass: move on, unless set_epoch was called meanwhile.
        if (self.epoch, self.start_batch) == (epoch, start):
            self.epoch, self.start_batch = epoch + 1, 0

    def iter_from(
        self, batch_index: int, epoch: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over batches ``batch_index, ..., len(self) - 1`` of an epoch (default: the current
        one), without changing the loader's epoch state."""
        e = self.epoch if epoch is None else int(epoch)
        self._check_start(batch_index)
        return self._iterate(e, batch_index)

    def _iterate(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._check_start(start)
        perm = self.permutation(epoch)
        for b in range(start, len(self)):
            yield self._batch(epoch, b, self._batch_indices(perm, b))

    def batch(self, batch_index: int, epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``batch_index`` of an epoch (default: the current one), by random access."""
        e = self.epoch if epoch is None else int(epoch)
        if not 0 <= batch_index < len(self):
            raise IndexError(f"batch index {batch_index} out of range [0, {len(self)})")
        return self._batch(e, batch_index, self._batch_indices(self.permutation(e), batch_index))

    def _batch(self, epoch: int, b: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class TensorBatchLoader(BatchSchedule):
    """Mini-batches ``(x float32, y int64)`` from in-memory tensors, resumable at any batch.

    Args:
        images: ``(N, ...)`` tensor (typically uint8 ``(N, C, H, W)``), on any device.
        labels: ``(N,)`` integer tensor.
        batch_size: samples per batch (>= 1).
        shuffle: new random order every epoch (a function of ``(seed, epoch)``).
        drop_last: drop the last incomplete batch.
        augment: an :class:`~friendly_sam.data.augment.Augmentation` (e.g. a
            :class:`~friendly_sam.data.BatchAugment`), called as ``augment(x, generator)``; the generator is seeded from
            ``(seed, epoch, batch index)``. ``None``: uint8 images are scaled to [0, 1] floats.
        seed: base seed.
        device: where batches are delivered (the images are moved batch by batch, before
            augmentation); ``None`` keeps the images' device.
        shard: ``(index, count)`` for data-parallel training: every batch is built (ordered and
            augmented) as the whole global batch, then only part ``index`` of ``count`` contiguous
            parts is delivered (sizes as ``torch.tensor_split``). The global batches, their order
            and augmentation, and ``len()`` do not depend on ``count``.

    Epochs: ``set_epoch(e)`` selects epoch ``e``. Without it, each *completed* pass advances the
    epoch by one, so plain ``for epoch ...: for x, y in loader`` also reshuffles.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        **options: Unpack[ScheduleOptions],
    ) -> None:
        if images.dim() < 1 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images and labels must have the same first dimension (labels 1-d); got {tuple(images.shape)} "
                f"and {tuple(labels.shape)}"
            )
        super().__init__(int(images.shape[0]), batch_size, **options)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        self.images = images
        self.labels = labels
        self._device_perm: tuple[tuple[int, int, torch.device], torch.Tensor] | None = None

    def _indices_on(self, device: torch.device, epoch: int, b: int, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` (batch ``b``'s slice of the epoch's CPU permutation) on ``device``: off the CPU, the
        permutation is moved there once per epoch and sliced, not copied batch by batch (a blocking copy to a
        GPU waits for its queue)."""
        if device.type == "cpu":
            return idx
        key = (self.seed, epoch, device)
        if self._device_perm is None or self._device_perm[0] != key:
            self._device_perm = (key, self.permutation(epoch).to(device))
        return self._batch_indices(self._device_perm[1], b)

    def _batch(self, epoch: int, b: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images.index_select(0, self._indices_on(self.images.device, epoch, b, idx))
        y = self.labels.index_select(0, self._indices_on(self.labels.device, epoch, b, idx))
        if self.device is not None:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
        y = y.to(torch.int64)
        if self.augment is not None:
            x = self.augment(x, augment_generator(self.seed, epoch, b))
        elif x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        elif not x.is_floating_point():
            x = x.to(torch.float32)
        if self.shard[1] > 1:
            lo, hi = self._shard_rows(len(y))
            x, y = x[lo:hi], y[lo:hi]
        return x, y

    def __repr__(self) -> str:
        return (
            f"TensorBatchLoader(n={self.num_samples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, augment={self.augment!r}, seed={self.seed}, epoch={self.epoch})"
        )
