"""Subsets, validation splits and label noise: chosen as indices, written once for every kind of data.

:func:`prepare_splits` turns an :class:`~friendly_sam.data.ImageData` into the data a run trains and
evaluates on (the ``--train-subset``, ``--val-size``, ``--test-subset``, ``--label-noise`` and
``--noise-kind`` options of ``fsam train``). Every choice is a pure function of the sizes and the seed,
so a built-in set and an image folder, in memory or streamed, select the same samples.

:func:`subset` and :func:`train_val_split` do the same selections on plain tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .image_data import ImageData
from .loader import derive_seed
from .noise import apply_label_noise

__all__ = [
    "Split",
    "SplitPlan",
    "prepare_splits",
    "subset",
    "subset_indices",
    "train_val_indices",
    "train_val_split",
]

_SUBSET_STREAM = 0x5B5E
_VAL_STREAM = 0x5F17


def _permutation(n: int, seed: int, stream: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, stream)))


def subset_indices(total: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` of ``range(total)`` chosen at random, sorted. Nested: a larger ``n`` with the same seed
    contains the smaller subset."""
    if not 0 <= n <= total:
        raise ValueError(f"n must be in [0, {total}], got {n}")
    return _permutation(total, seed, _SUBSET_STREAM)[:n].sort().values


def train_val_indices(total: int, val_size: int | float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` indices of ``range(total)``, each sorted. ``val_size`` is a count (int) or a
    fraction in (0, 1) (float, rounded half up)."""
    if isinstance(val_size, float) and not isinstance(val_size, bool):
        if not 0.0 < val_size < 1.0:
            raise ValueError(f"a fractional val_size must be in (0, 1), got {val_size}")
        n_val = int(math.floor(val_size * total + 0.5))
    elif isinstance(val_size, int) and not isinstance(val_size, bool):
        n_val = val_size
    else:
        raise TypeError(f"val_size must be an int or a float, got {type(val_size).__name__}")
    if not 0 <= n_val <= total:
        raise ValueError(f"val_size {val_size} is out of range for {total} samples")
    perm = _permutation(total, seed, _VAL_STREAM)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _check_pair(images: torch.Tensor, labels: torch.Tensor) -> int:
    if images.dim() < 1 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images and labels must have the same first dimension (labels 1-d); got {tuple(images.shape)} "
            f"and {tuple(labels.shape)}"
        )
    return int(images.shape[0])


class Split(NamedTuple):
    """Result of :func:`train_val_split`."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor


def train_val_split(
    images: torch.Tensor, labels: torch.Tensor, val_size: int | float, seed: int = 0
) -> Split:
    """Split off a random validation set (:func:`train_val_indices`); both parts keep the original
    relative order of the samples."""
    train_idx, val_idx = train_val_indices(_check_pair(images, labels), val_size, seed)
    pick = [(t, idx.to(t.device)) for idx in (train_idx, val_idx) for t in (images, labels)]
    return Split(*(t[i] for t, i in pick))


def subset(
    images: torch.Tensor, labels: torch.Tensor, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random subset of ``n`` samples (:func:`subset_indices`), in original order."""
    idx = subset_indices(_check_pair(images, labels), n, seed)
    return images[idx.to(images.device)], labels[idx.to(labels.device)]


@dataclass(frozen=True)
class SplitPlan:
    """Which samples a run uses (the data options of ``fsam train``).

    ``train_subset``: a random subset of the training split (``seed``); ``val_size``: that many training
    samples held out as the ``val`` split (clean labels: model selection stays honest); ``test_subset``: a
    fixed random subset of the test split (seed 0: the same for every run); ``label_noise`` /
    ``noise_kind``: corrupt that fraction of the training labels (``seed``)."""

    train_subset: int | None = None
    val_size: int = 0
    test_subset: int | None = None
    label_noise: float = 0.0
    noise_kind: str = "symmetric"
    seed: int = 0


def prepare_splits(data: ImageData, plan: SplitPlan) -> tuple[ImageData, torch.Tensor | None]:
    """``data`` with ``plan`` applied, and the indices (into the new training split) of the samples whose
    label the noise changed (``None`` without noise)."""
    n = len(data.splits["train"])
    if plan.train_subset is not None:
        if plan.train_subset > n:
            raise ValueError(f"--train-subset {plan.train_subset} exceeds the {n} training images")
        data, n = data.take("train", subset_indices(n, plan.train_subset, plan.seed)), plan.train_subset
    if plan.val_size:
        if "val" in data.splits:
            raise ValueError(f"--val-size: {data.name} has a val/ split already; drop --val-size")
        if plan.val_size >= n:
            raise ValueError(f"--val-size {plan.val_size} leaves no training images (have {n})")
        train_idx, val_idx = train_val_indices(n, plan.val_size, plan.seed)
        data = data.take("train", val_idx, into="val").take("train", train_idx)
    test = data.splits.get("test")
    if test is not None and plan.test_subset is not None and plan.test_subset < len(test):
        data = data.take("test", subset_indices(len(test), plan.test_subset, seed=0))
    if plan.label_noise <= 0:
        return data, None
    train = data.splits["train"]
    labels, noisy_indices = apply_label_noise(
        train.labels, data.num_classes, plan.label_noise, plan.noise_kind, seed=plan.seed, dataset=data.name
    )
    return data.take("train", torch.arange(len(train)), labels=labels), noisy_indices
