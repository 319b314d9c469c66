"""A streaming loader over image files with exactly the batches of :class:`TensorBatchLoader`.

:class:`StreamingBatchLoader` is for image folders too large to decode into memory. It shares
:class:`~friendly_sam.data.loader.BatchSchedule` with the in-memory loader: the same per-epoch order
from ``(seed, epoch)``, the same augmentation generator per ``(seed, epoch, batch)``, the same
``set_epoch(epoch, start_batch)`` resume and the same ``shard=(rank, world)`` share of every global
batch. Only the fetching differs: a ``torch.utils.data.DataLoader`` whose worker processes decode
the files (:class:`~friendly_sam.data.image_decode.FolderImages`) into pinned memory (when the
batches go to a GPU), while the main process moves each batch to the device and augments it there.

So for the same files, the streaming and in-memory loaders deliver identical batches. Under
``torchrun`` each rank decodes only its rows of a global batch: the augmentation's random choices
are drawn for the whole global batch and sliced (:func:`~friendly_sam.data.augment.augment_rows`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from .augment import augment_rows
from .folder_scan import ImageFileError, ImageFolderSplit
from .image_decode import FolderImages, collate_decoded
from .loader import BatchSchedule, ScheduleOptions, augment_generator, derive_seed

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; annotations only

__all__ = ["StreamedSamples", "StreamingBatchLoader"]

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
        split: the files and labels (:func:`~friendly_sam.data.folder_scan.scan_split`).
        batch_size: as :class:`TensorBatchLoader`.
        shuffle: as :class:`TensorBatchLoader`.
        drop_last: as :class:`TensorBatchLoader`.
        seed: as :class:`TensorBatchLoader`.
        device: as :class:`TensorBatchLoader`.
        shard: as :class:`TensorBatchLoader`.
        channels: channels of the decoded images (1 or 3).
        base_size: side of the decoded base images (shorter side resized, centre square).
        augment: an :class:`~friendly_sam.data.augment.Augmentation` applied to each uint8
            ``(N, C, base, base)`` batch on ``device`` with the batch's generator; each rank decodes and
            augments only its own rows of a global batch (``None``: scaled to [0, 1]).
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
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        **options: Unpack[ScheduleOptions],
    ) -> None:
        super().__init__(len(split), batch_size, **options)
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
            generator=torch.Generator().manual_seed(derive_seed(self.seed, _WORKER_STREAM)),
        )

    def _iterate(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._check_start(start)
        perm = self.permutation(epoch)
        lists = []
        for b in range(start, len(self)):
            idx = self._batch_indices(perm, b)
            lo, hi = self._shard_rows(len(idx))
            lists.append(idx[lo:hi].tolist())
        self._batches.batches = lists
        for b, fetched in enumerate(self._loader, start=start):
            yield self._finish(epoch, b, len(self._batch_indices(perm, b)), fetched)

    def _batch(self, epoch: int, b: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._shard_rows(len(idx))
        fetched = collate_decoded([self._dataset[i] for i in idx[lo:hi].tolist()])
        return self._finish(epoch, b, len(idx), fetched)

    def _finish(
        self,
        epoch: int,
        b: int,
        size: int,
        fetched: tuple[torch.Tensor | None, torch.Tensor, list[tuple[int, str]]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Device and augmentation of this rank's rows, as TensorBatchLoader would give them."""
        images, labels, errors = fetched
        if errors:
            more = f" (and {len(errors) - 1} more unreadable files in this batch)" if len(errors) > 1 else ""
            raise ImageFileError(errors[0][1] + more)
        if images is None:
            images = torch.zeros((0, self.channels, self.base_size, self.base_size), dtype=torch.uint8)
        if self.device is not None:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
        lo, _ = self._shard_rows(size)
        return augment_rows(self.augment, images, augment_generator(self.seed, epoch, b), size, lo), labels

    def __repr__(self) -> str:
        return (
            f"StreamingBatchLoader(n={self.num_samples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, augment={self.augment!r}, seed={self.seed}, epoch={self.epoch}, "
            f"num_workers={self.num_workers}, pin_memory={self.pin_memory})"
        )


@dataclass(frozen=True)
class StreamedSamples:
    """The samples of an image-folder split read from their files every epoch (the streaming path):
    a :class:`~friendly_sam.data.image_data.Samples` whose loader is a :class:`StreamingBatchLoader`."""

    files: ImageFolderSplit
    channels: int
    base_size: int
    num_workers: int = field(default=0, repr=False)

    @property
    def labels(self) -> torch.Tensor:
        return self.files.labels

    def __len__(self) -> int:
        return len(self.files)

    def select(self, indices: torch.Tensor) -> StreamedSamples:
        return StreamedSamples(self.files.select(indices), self.channels, self.base_size, self.num_workers)

    def with_labels(self, labels: torch.Tensor) -> StreamedSamples:
        return StreamedSamples(self.files.with_labels(labels), self.channels, self.base_size, self.num_workers)

    def loader(self, batch_size: int, **options: Any) -> StreamingBatchLoader:
        # worker processes outlive the epochs of a training loader; evaluation loaders start them per pass
        return StreamingBatchLoader(
            self.files,
            batch_size,
            channels=self.channels,
            base_size=self.base_size,
            num_workers=self.num_workers,
            persistent_workers=bool(options.get("shuffle")),
            **options,
        )
