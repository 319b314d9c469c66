"""The one data-set abstraction: labelled images in named splits, for built-in sets and image folders alike.

:class:`ImageData` is what :func:`~friendly_sam.data.load_dataset` (Fashion-MNIST, MNIST, CIFAR) and
:func:`~friendly_sam.data.load_image_folder` (your own images) return. Everything downstream (subsets,
validation splits, label noise in :mod:`.splits`; loaders; evaluation; the data fingerprint a checkpoint
keeps) works on it without asking which kind it is::

    data = load_dataset("fashion-mnist")            # or load_image_folder("DIR")
    data = data.take("train", torch.arange(1000))   # a selection of samples, the same on every kind
    train = data.loader("train", 128, train=True, seed=0)
    test = data.loader("test", 500)                 # fixed order, evaluation transform

A split is a :class:`Samples`: :class:`InMemorySamples` (uint8 images in a tensor: built-in sets, and image
folders that fit the memory budget) or :class:`~friendly_sam.data.folder_scan.StreamedSamples` (image files
decoded by worker processes every epoch). Both give identical batches for the same seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .augment import Augmentation
from .loader import BatchSchedule, TensorBatchLoader

__all__ = ["ImageData", "InMemorySamples", "Samples"]


class Samples(Protocol):
    """The samples of one split: ``labels[i]`` is the label of sample ``i``."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def select(self, indices: torch.Tensor) -> Samples:
        """Samples ``indices``, in that order."""
        ...

    def with_labels(self, labels: torch.Tensor) -> Samples:
        """The same samples with other labels (label noise)."""
        ...

    def loader(self, batch_size: int, **options: Any) -> BatchSchedule:
        """A loader over these samples; ``options`` as :class:`~friendly_sam.data.TensorBatchLoader`."""
        ...


def _check_labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (n,):
        raise ValueError(f"expected {n} integer labels, got {labels.dtype} {tuple(labels.shape)}")
    return labels.to(torch.int64)


@dataclass(frozen=True)
class InMemorySamples:
    """Samples held as uint8 images ``(N, C, H, W)`` with int64 labels ``(N,)``."""

    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ValueError(f"labels must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, indices: torch.Tensor) -> InMemorySamples:
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        return InMemorySamples(self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)])

    def with_labels(self, labels: torch.Tensor) -> InMemorySamples:
        return InMemorySamples(self.images, _check_labels(labels, len(self)))

    def loader(self, batch_size: int, **options: Any) -> TensorBatchLoader:
        return TensorBatchLoader(self.images, self.labels, batch_size, **options)


@dataclass(frozen=True)
class ImageData:
    """A labelled image-classification data set: named splits (``train``, and ``val`` / ``test`` where
    present), its classes, image geometry, normalisation and augmentations.

    ``mean`` / ``std``: per-channel mean and (population) standard deviation of the training images
    scaled to [0, 1]. ``train_augment`` is applied to training batches, ``eval_augment`` (normalisation,
    centre crop) to evaluation batches. ``fingerprint``: what the data is, for resume checks
    (:mod:`.identity`), taken of the whole data set as loaded (before any :meth:`take`).
    """

    name: str
    classes: tuple[str, ...] = field(repr=False)
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: dict[str, Samples] = field(repr=False)
    train_augment: Augmentation = field(repr=False)
    eval_augment: Augmentation = field(repr=False)
    fingerprint: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _split(self, split: str) -> Samples:
        if split not in self.splits:
            raise ValueError(f"{self.name} has no {split!r} split (present: {', '.join(self.splits)})")
        return self.splits[split]

    def take(
        self,
        split: str,
        indices: torch.Tensor | Sequence[int],
        *,
        into: str | None = None,
        labels: torch.Tensor | None = None,
    ) -> ImageData:
        """A copy whose split ``into`` (default: ``split`` itself) holds samples ``indices`` of ``split``,
        with ``labels`` instead of theirs if given: subsets, validation splits and label noise."""
        chosen = self._split(split).select(torch.as_tensor(indices, dtype=torch.int64).reshape(-1))
        if labels is not None:
            chosen = chosen.with_labels(labels)
        return dataclasses.replace(self, splits={**self.splits, into or split: chosen})

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        train: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
    ) -> BatchSchedule:
        """A loader of ``split``. ``train=True``: a new order every epoch and ``train_augment``; else the
        fixed order and ``eval_augment``. ``shard=(rank, world)``: this rank's part of every batch."""
        return self._split(split).loader(
            batch_size,
            shuffle=train,
            drop_last=drop_last,
            augment=self.train_augment if train else self.eval_augment,
            seed=seed,
            device=device,
            shard=shard,
        )

    # in-memory splits, by their old names (a built-in set is always in memory)
    def _images(self, split: str) -> torch.Tensor:
        samples = self._split(split)
        if not isinstance(samples, InMemorySamples):
            raise ValueError(f"the {split} split of {self.name} is streamed from files, not held in memory")
        return samples.images

    @property
    def train_images(self) -> torch.Tensor:
        return self._images("train")

    @property
    def train_labels(self) -> torch.Tensor:
        return self._split("train").labels

    @property
    def test_images(self) -> torch.Tensor:
        return self._images("test")

    @property
    def test_labels(self) -> torch.Tensor:
        return self._split("test").labels
