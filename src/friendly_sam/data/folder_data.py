"""Training on your own images: :func:`load_image_folder` picks the in-memory or the streaming path.

::

    from friendly_sam.data import load_image_folder

    data = load_image_folder("DIR", image_size=224, resize_size=256, skip_bad_images=True, log=print)
    train = data.loader("train", 256, train=True, seed=0, device="cuda", shard=(rank, world))
    for epoch in range(epochs):
        train.set_epoch(epoch)                 # or set_epoch(epoch, start_batch=k) on resume
        for x, y in train: ...
    val = data.loader("val", 500)              # centre crop, fixed order

Both paths give the same batches for the same seed (order, pixels, labels): the in-memory path
decodes every image once into a uint8 tensor (:class:`~friendly_sam.data.TensorBatchLoader`); the
streaming path decodes in worker processes every epoch
(:class:`~friendly_sam.data.streaming.StreamingBatchLoader`). The in-memory path is taken when the
decoded images fit ``memory_budget`` bytes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..files import check_memory, memory_available
from .datasets import channel_stats
from .image_augment import ResizedCropAugment
from .imagefolder import (
    FolderImages,
    ImageFileError,
    ImageFolderSplit,
    collate_decoded,
    find_splits,
    guess_channels,
    scan_split,
)
from .loader import BatchSchedule, TensorBatchLoader, derive_seed
from .streaming import StreamingBatchLoader

__all__ = [
    "IMAGE_FOLDER",
    "STORAGE_CHOICES",
    "ImageFolderData",
    "decode_split",
    "default_memory_budget",
    "default_num_workers",
    "load_image_folder",
]

IMAGE_FOLDER = "imagefolder"
"""The data-set name of your own image folder (``fsam train --dataset imagefolder --data-dir DIR``)."""

STORAGE_CHOICES: tuple[str, ...] = ("auto", "memory", "streaming")
"""``auto``: in memory when the decoded images fit the memory budget, else streaming."""

_DECODE_CHUNK = 64
_STATS_STREAM = 0x57A75


def default_memory_budget() -> int:
    """Half of the memory this process may use now (:func:`friendly_sam.files.memory_available`: the
    least of ``MemAvailable``, the address-space limit and the container's limit), else 4 GiB."""
    available, _ = memory_available()
    return 4 << 30 if available is None else available // 2


def default_num_workers() -> int:
    """Decoding processes: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus))


def decode_split(
    split: ImageFolderSplit,
    channels: int,
    size: int,
    *,
    num_workers: int = 0,
    skip_bad: bool = False,
    keep_pixels: bool = True,
) -> tuple[torch.Tensor | None, list[int], list[str]]:
    """Decode every file of ``split`` (in parallel with ``num_workers`` processes).

    Returns ``(images, good, bad)``: uint8 ``(len(good), C, size, size)`` images of the readable
    files (``None`` with ``keep_pixels=False``: a check only), their indices, and one message per
    unreadable file. Without ``skip_bad`` the first unreadable file raises :class:`ImageFileError`.
    """
    n = len(split)
    chunks = [list(range(i, min(i + _DECODE_CHUNK, n))) for i in range(0, n, _DECODE_CHUNK)]
    loader = DataLoader(
        FolderImages(split, channels, size),
        batch_sampler=chunks,
        num_workers=num_workers,
        collate_fn=collate_decoded,
        generator=torch.Generator(),  # leaves torch's global RNG alone (see StreamingBatchLoader)
    )
    out = torch.empty((n, channels, size, size), dtype=torch.uint8) if keep_pixels else None
    ok = torch.ones(n, dtype=torch.bool)
    bad: list[str] = []
    for rows, (images, _, errors) in zip(chunks, loader):
        if errors and not skip_bad:
            raise ImageFileError(errors[0][1])
        for row, message in errors:
            ok[rows[row]] = False
            bad.append(message)
        if out is not None and images is not None:
            out[rows[0] : rows[-1] + 1] = images
    good = ok.nonzero().flatten()
    return (out[good] if out is not None else None), good.tolist(), bad


@dataclass
class ImageFolderData:
    """An image folder ready to load: classes, splits, normalisation and the chosen path.

    ``splits`` hold the readable files (skipped ones removed); ``images`` the decoded base images of
    each split when ``storage == "memory"`` (same order as ``splits``), else ``None``.
    """

    root: Path
    classes: tuple[str, ...]
    in_channels: int
    image_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    storage: str
    reason: str
    splits: dict[str, ImageFolderSplit] = field(repr=False)
    images: dict[str, torch.Tensor] | None = field(repr=False)
    skipped: dict[str, list[str]] = field(repr=False)
    train_augment: ResizedCropAugment = field(repr=False)
    eval_augment: ResizedCropAugment = field(repr=False)
    num_workers: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

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
        """A loader of ``split`` ("train", "val", "test"). ``train=True``: shuffled every epoch and
        randomly cropped/flipped (``train_augment``); else fixed order and centre crop."""
        if split not in self.splits:
            raise ValueError(f"{self.root} has no {split}/ split (present: {', '.join(self.splits)})")
        augment = self.train_augment if train else self.eval_augment
        common: dict[str, Any] = dict(
            shuffle=train, drop_last=drop_last, augment=augment, seed=seed, device=device, shard=shard
        )
        if self.images is not None:
            return TensorBatchLoader(self.images[split], self.splits[split].labels, batch_size, **common)
        return StreamingBatchLoader(
            self.splits[split],
            batch_size,
            channels=self.in_channels,
            base_size=self.resize_size,
            num_workers=self.num_workers,
            persistent_workers=train,
            **common,
        )

    def take(
        self,
        split: str,
        indices: torch.Tensor,
        *,
        into: str | None = None,
        labels: torch.Tensor | None = None,
    ) -> ImageFolderData:
        """A copy whose split ``into`` (default: ``split`` itself) holds samples ``indices`` of ``split``,
        with ``labels`` instead of theirs if given: subsets, validation splits and label noise, the
        same on both paths. E.g. a validation split off ``train``::

            s = train_val_split(torch.arange(n), data.splits["train"].labels, 0.1, seed=0)  # indices
            data = data.take("train", s.val_images, into="val").take("train", s.train_images)
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        chosen = self.splits[split].select(idx)
        if labels is not None:
            chosen = chosen.with_labels(labels)
        target = split if into is None else into
        images = None
        if self.images is not None:
            images = {**self.images, target: self.images[split][idx]}
        return dataclasses.replace(self, splits={**self.splits, target: chosen}, images=images)

    def record(self) -> dict[str, Any]:
        """What a run directory keeps about the data (e.g. as ``classes.json``): the class list in
        label order, the split sizes, the skipped files, the image geometry and the chosen path."""
        return {
            "root": str(self.root),
            "classes": list(self.classes),
            "counts": {name: len(s) for name, s in self.splits.items()},
            "skipped": {name: list(files) for name, files in self.skipped.items()},
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "storage": self.storage,
            "reason": self.reason,
        }


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def _choose_storage(storage: str, needed: int, budget: int | None) -> tuple[str, str]:
    if storage not in STORAGE_CHOICES:
        raise ValueError(f"storage must be one of {', '.join(STORAGE_CHOICES)}, got {storage!r}")
    gib = f"{needed / (1 << 30):.2f} GiB"
    if storage == "memory":  # refused with the number before the allocation fails with a traceback
        check_memory(needed, "holding the decoded images in memory", "lower --image-size / --resize-size, or "
                     "use --data-storage streaming (or auto)")  # fmt: skip
    if storage != "auto":
        return storage, f"{storage} requested (decoded images: {gib})"
    limit = default_memory_budget() if budget is None else int(budget)
    if needed <= limit:
        return "memory", f"decoded images {gib} fit the memory budget {limit / (1 << 30):.2f} GiB"
    return "streaming", f"decoded images {gib} exceed the memory budget {limit / (1 << 30):.2f} GiB"


def _stats_sample(n: int, limit: int) -> list[int]:
    # A fixed, seed-independent sample: the statistics (and so the model's input) do not vary with --seed.
    g = torch.Generator().manual_seed(derive_seed(_STATS_STREAM))
    return sorted(torch.randperm(n, generator=g)[:limit].tolist())


def _train_stats(
    train: ImageFolderSplit, images: torch.Tensor | None, channels: int, size: int, limit: int, workers: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    idx = _stats_sample(len(train), limit)
    if images is None:
        images, _, _ = decode_split(train.select(idx), channels, size, num_workers=workers, skip_bad=True)
    else:
        images = images[idx]
    assert images is not None
    return channel_stats(images)


def _decode_all(
    splits: dict[str, ImageFolderSplit],
    channels: int,
    size: int,
    workers: int,
    in_memory: bool,
    skip_bad: bool,
    say: Callable[[str], None],
) -> tuple[dict[str, torch.Tensor] | None, dict[str, list[str]]]:
    """Decode every split (in memory), or only check the files (streaming with ``skip_bad``);
    unreadable files are removed from ``splits`` (in place) and returned per split."""
    images: dict[str, torch.Tensor] | None = {} if in_memory else None
    skipped: dict[str, list[str]] = {}
    for name, split in list(splits.items()):
        if images is None and not skip_bad:
            continue  # streaming: an unreadable file is reported when it is reached
        decoded, good, bad = decode_split(
            split, channels, size, num_workers=workers, skip_bad=skip_bad, keep_pixels=images is not None
        )
        if images is not None and decoded is not None:
            images[name] = decoded
        if bad:
            skipped[name] = bad
            splits[name] = split.select(good)
            say(f"skipped {len(bad)} unreadable {name} image(s), e.g. {bad[0]}")
    return images, skipped


def _scan(root: str | os.PathLike[str]) -> dict[str, ImageFolderSplit]:
    dirs = find_splits(root)
    splits = {"train": scan_split(dirs["train"])}
    classes = splits["train"].classes
    splits.update({name: scan_split(d, classes) for name, d in dirs.items() if name != "train"})
    return splits


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int,
    resize_size: int | None = None,
    channels: int | None = None,
    random_crop: bool = True,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    flip: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stats_images: int = 10_000,
    storage: str = "auto",
    memory_budget: int | None = None,
    skip_bad_images: bool = False,
    num_workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ImageFolderData:
    """Scan ``root`` (``train/``, optional ``val/`` and ``test/``, one folder per class) and prepare it.

    Args:
        image_size: side of the images the model sees.
        resize_size: side of the base images (shorter side resized, centre square kept; evaluation takes
            the centre ``image_size`` crop; ImageNet: 256 / 224). Default: ``image_size``.
        channels: 1 (grey) or 3 (RGB); ``None``: 1 when the training images are grey, else 3.
        random_crop: random-resized-crop of the base image in training (area fraction in ``crop_scale``).
        crop_scale: the range of that area fraction.
        flip: horizontal flips in training.
        mean: normalisation mean (``std`` likewise); ``None``: computed on up to ``stats_images`` images.
        storage: ``auto`` (in memory when the decoded images fit ``memory_budget`` bytes, default
            :func:`default_memory_budget`), ``memory`` or ``streaming``.
        skip_bad_images: leave unreadable files out (listed in ``skipped``) instead of raising;
            the streaming path then checks every file once, up front.
        num_workers: decoding processes (default :func:`default_num_workers`).
        log: receives one line on the data and the chosen path (with the reason), one per skip.

    Raises: ``DatasetNotFoundError`` (no ``train/``, no classes, an empty class); ``ImageFileError``
    (an unreadable file without ``skip_bad_images``, named in the message).
    """
    say = log or (lambda _msg: None)
    size = _positive(image_size, "image_size")
    base = size if resize_size is None else _positive(resize_size, "resize_size")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    workers = default_num_workers() if num_workers is None else int(num_workers)
    splits = _scan(root)
    classes = splits["train"].classes
    chans = channels or guess_channels(splits["train"].paths)
    needed = sum(len(s) for s in splits.values()) * chans * base * base
    where, reason = _choose_storage(storage, needed, memory_budget)
    counts = ", ".join(f"{len(s)} {name}" for name, s in splits.items())
    say(
        f"image folder {root}: {len(classes)} classes, {counts} images -> {chans}x{size}x{size}; {where}: {reason}"
    )
    images, skipped = _decode_all(splits, chans, base, workers, where == "memory", skip_bad_images, say)
    if len(splits["train"]) == 0:
        raise ImageFileError(f"{splits['train'].directory}: no readable training images")
    if mean is None or std is None:
        mean, std = _train_stats(
            splits["train"], images["train"] if images else None, chans, base, stats_images, workers
        )
    return ImageFolderData(
        root=Path(root),
        classes=classes,
        in_channels=chans,
        image_size=size,
        resize_size=base,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        storage=where,
        reason=reason,
        splits=splits,
        images=images,
        skipped=skipped,
        train_augment=ResizedCropAugment(
            size, random_crop=random_crop, scale=crop_scale, flip=flip, mean=mean, std=std
        ),
        eval_augment=ResizedCropAugment(size, mean=mean, std=std),
        num_workers=workers,
    )
