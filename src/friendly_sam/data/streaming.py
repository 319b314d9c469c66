"""A streaming loader over image files with exactly the batches of :class:`TensorBatchLoader`.

:class:`StreamingBatchLoader` is for image folders too large to decode into memory. It shares
:class:`~friendly_sam.data.loader.BatchSchedule` with the in-memory loader: the same per-epoch order
from ``(seed, epoch)``, the same augmentation generator per ``(seed, epoch, batch)``, the same
``set_epoch(epoch, start_batch)`` resume and the same ``shard=(rank, world)`` share of every global
batch. Only the fetching differs: a ``torch.utils.data.DataLoader`` whose worker processes decode
the files (:class:`~friendly_sam.data.imagefolder.FolderImages`) into pinned memory (when the
batches go to a GPU), while the main process moves each batch to the device and augments it there.

So for the same files, the streaming and in-memory loaders deliver identical batches. Under
``torchrun`` each rank decodes only its rows of a global batch: the augmentation's random choices
are drawn for the whole global batch and sliced (:func:`~friendly_sam.data.image_augment.augment_rows`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from .augment import BatchAugment
from .image_augment import ResizedCropAugment, augment_rows
from .imagefolder import FolderImages, ImageFileError, ImageFolderSplit, collate_decoded
from .loader import Augment, BatchSchedule, augment_generator, derive_seed, shard_bounds

__all__ = ["StreamingBatchLoader"]

_WORKER_STREAM = 0x3E7D


class _BatchLists:
    """The batch sampler: index lists set by the loader before each pass (the DataLoader and its
    persistent workers outlive the passes)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamingBatchLoader(BatchSchedule):
    """Mini-batches ``(x float32, y int64)`` decoded from image files by worker processes.

    Args:
        split: the files and labels (:func:`~friendly_sam.data.imagefolder.scan_split`).
        batch_size: as :class:`TensorBatchLoader`.
        shuffle: as :class:`TensorBatchLoader`.
        drop_last: as :class:`TensorBatchLoader`.
        seed: as :class:`TensorBatchLoader`.
        device: as :class:`TensorBatchLoader`.
        shard: as :class:`TensorBatchLoader`.
        channels: channels of the decoded images (1 or 3).
        base_size: side of the decoded base images (shorter side resized, centre square).
        augment: applied to each uint8 ``(N, C, base, base)`` batch on ``device`` with the batch's
            generator. A :class:`~friendly_sam.data.BatchAugment` or :class:`ResizedCropAugment` (or
            ``None``) lets each rank decode only its own rows; any other callable is given the whole
            global batch, as :class:`TensorBatchLoader` does.
        num_workers: decoding processes (0: decode in the main process).
        prefetch_factor: batches each worker decodes ahead.
        pin_memory: page-locked batches for fast copies; ``None``: when ``device`` is CUDA.
        persistent_workers: keep the worker processes between passes (saves their start-up each
            epoch; off for loaders used rarely, such as evaluation).

    Raises (while iterating):
        ImageFileError: a file cannot be decoded; the message names it.
    """

    def __init__(
        self,
        split: ImageFolderSplit,
        batch_size: int,
        *,
        channels: int,
        base_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        shard: tuple[int, int] = (0, 1),
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__(
            len(split),
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            augment=augment,
            seed=seed,
            device=device,
            shard=shard,
        )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.split = split
        self.labels = split.labels
        self.channels = channels
        self.base_size = base_size
        self.num_workers = int(num_workers)
        if pin_memory is None:
            pin_memory = self.device is not None and self.device.type == "cuda"
        self.pin_memory = bool(pin_memory)
        # Only this rank's rows are decoded when the augmentation can be applied row-wise.
        self.rows_only = augment is None or isinstance(augment, (BatchAugment, ResizedCropAugment))
        self._dataset = FolderImages(split, channels, base_size)
        self._batches = _BatchLists()
        self._loader = DataLoader(
            self._dataset,
            batch_sampler=self._batches,
            num_workers=self.num_workers,
            collate_fn=collate_decoded,
            pin_memory=self.pin_memory,
            prefetch_factor=prefetch_factor if self.num_workers > 0 else None,
            persistent_workers=persistent_workers and self.num_workers > 0,
            # its own generator: the DataLoader draws the workers' base seed from it, not from torch's
            # global RNG (which would make training depend on when and how often loaders start)
            generator=torch.Generator().manual_seed(derive_seed(seed, _WORKER_STREAM)),
        )

    def _rows(self, size: int) -> tuple[int, int]:
        return shard_bounds(size, *self.shard) if self.rows_only else (0, size)

    def _iterate(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._check_start(start)
        perm = self.permutation(epoch)
        lists = []
        for b in range(start, len(self)):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            lo, hi = self._rows(len(idx))
            lists.append(idx[lo:hi].tolist())
        self._batches.batches = lists
        for b, fetched in enumerate(self._loader, start=start):
            size = len(perm[b * self.batch_size : (b + 1) * self.batch_size])
            yield self._finish(epoch, b, size, fetched)

    def _batch(self, epoch: int, b: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._rows(len(idx))
        fetched = collate_decoded([self._dataset[i] for i in idx[lo:hi].tolist()])
        return self._finish(epoch, b, len(idx), fetched)

    def _finish(
        self,
        epoch: int,
        b: int,
        size: int,
        fetched: tuple[torch.Tensor | None, torch.Tensor, list[tuple[int, str]]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Device, augmentation and (for whole global batches) this rank's rows, as TensorBatchLoader."""
        images, labels, errors = fetched
        if errors:
            more = f" (and {len(errors) - 1} more unreadable files in this batch)" if len(errors) > 1 else ""
            raise ImageFileError(errors[0][1] + more)
        if images is None:
            images = torch.zeros((0, self.channels, self.base_size, self.base_size), dtype=torch.uint8)
        if self.device is not None:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
        generator = augment_generator(self.seed, epoch, b)
        if self.rows_only:
            lo, _ = shard_bounds(size, *self.shard)
            return augment_rows(self.augment, images, generator, size, lo), labels  # type: ignore[arg-type]
        x = self.augment(images, generator)  # type: ignore[misc]
        lo, hi = shard_bounds(size, *self.shard)
        return x[lo:hi], labels[lo:hi]

    def __repr__(self) -> str:
        return (
            f"StreamingBatchLoader(n={self.num_samples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, augment={self.augment!r}, seed={self.seed}, epoch={self.epoch}, "
            f"num_workers={self.num_workers}, pin_memory={self.pin_memory})"
        )
