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

The result is an :class:`~friendly_sam.data.ImageData` like a built-in set's. Defaults follow the data:
the colour mode is grey when every image is grey, else RGB; the image size is the median shorter side
of the training images, at most 224 (ImageNet's size): a folder of 28x28 images trains at 28x28.
Which files are read, and how links are followed: :mod:`.folder_scan`.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..files import check_memory, memory_available
from .datasets import channel_stats
from .folder_scan import SKIP_HINT, FolderScan, ImageFileError, find_splits, scan_split
from .identity import folder_fingerprint
from .image_data import ImageData, InMemorySamples, Samples
from .image_decode import colour_channels, decode_split, probe_images
from .loader import derive_seed
from .resized_crop import ResizedCropAugment
from .streaming import StreamedSamples

__all__ = [
    "DEFAULT_MAX_IMAGE_SIZE",
    "IMAGE_FOLDER",
    "STORAGE_CHOICES",
    "ImageFolderData",
    "default_memory_budget",
    "default_num_workers",
    "load_image_folder",
]

IMAGE_FOLDER = "imagefolder"
"""The data-set name of your own image folder (``fsam train --dataset imagefolder --data-dir DIR``)."""

STORAGE_CHOICES: tuple[str, ...] = ("auto", "memory", "streaming")
"""``auto``: in memory when the decoded images fit the memory budget, else streaming."""

DEFAULT_MAX_IMAGE_SIZE = 224
"""The default image size is the median shorter side of the training images, at most this."""

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


@dataclass(frozen=True)
class ImageFolderData(ImageData):
    """An image folder ready to load: an :class:`ImageData` plus where it came from and how it is held.

    ``resize_size`` is the side of the decoded base images (``image_size`` the side the model sees);
    ``storage`` is ``memory`` or ``streaming``, ``reason`` why; ``skipped`` the unreadable files left out
    per split (``--skip-bad-images``)."""

    root: Path = Path()
    resize_size: int = 0
    storage: str = "memory"
    reason: str = ""
    skipped: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def record(self) -> dict[str, Any]:
        """What a run directory keeps about the data (``classes.json``): the class list in label order,
        the split sizes, the skipped files, the image geometry and the chosen path."""
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
    train: Samples, channels: int, size: int, limit: int, workers: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    idx = _stats_sample(len(train), limit)
    if isinstance(train, InMemorySamples):
        return channel_stats(train.images[idx])
    assert isinstance(train, StreamedSamples)
    images, _, _ = decode_split(train.files.select(idx), channels, size, num_workers=workers, skip_bad=True)
    assert images is not None
    return channel_stats(images)




class _Files:
    """The files of every split while a folder is prepared: bad ones are dropped as they are found."""

    def __init__(self, scans: dict[str, FolderScan], skip_bad: bool, say: Callable[[str], None]) -> None:
        self.splits = {name: scan.split for name, scan in scans.items()}
        self.sizes = {name: scan.sizes for name, scan in scans.items()}
        self.skipped: dict[str, list[str]] = {}
        self.skip_bad, self.say = skip_bad, say
        for name, scan in scans.items():
            messages = [f"{path}: {why}, not an image file (never opened). {SKIP_HINT}" for path, why in scan.not_regular]
            self.drop(name, [], messages)

    def drop(self, name: str, rows: Sequence[int], messages: Sequence[str]) -> None:
        """Leave out ``rows`` of split ``name`` (unreadable: ``messages``), or raise without skip_bad."""
        if not messages:
            return
        if not self.skip_bad:
            raise ImageFileError(messages[0])
        bad = set(rows)
        keep = [i for i in range(len(self.splits[name])) if i not in bad]
        self.splits[name] = self.splits[name].select(keep)
        self.sizes[name] = tuple(self.sizes[name][i] for i in keep)
        self.skipped.setdefault(name, []).extend(messages)
        self.say(f"skipped {len(messages)} unreadable {name} image(s), e.g. {messages[0]}")
        if not self.splits[name]:
            raise ImageFileError(
                f"{self.splits[name].directory}: none of the {name} images is readable "
                f"({len(self.skipped[name])} skipped, e.g. {self.skipped[name][0]})"
            )

    def fingerprint(self, classes: Sequence[str]) -> dict[str, Any]:
        files = {
            name: [(Path(os.path.relpath(p, s.directory)).as_posix(), n) for p, n in zip(s.paths, self.sizes[name])]
            for name, s in self.splits.items()
        }
        return folder_fingerprint(classes, files)


def _scan(root: str | os.PathLike[str]) -> dict[str, FolderScan]:
    dirs = find_splits(root)
    scans = {"train": scan_split(dirs["train"])}
    classes = scans["train"].split.classes
    scans.update({name: scan_split(d, classes) for name, d in dirs.items() if name != "train"})
    return scans


def _probe(files: _Files, workers: int) -> tuple[int, int]:
    """Read every header: drop unreadable files; the colour channels of all images and the median
    shorter side of the training images."""
    channels, sides = 1, [0]
    for name, split in list(files.splits.items()):
        probe = probe_images(split.paths, workers)
        if channels == 1:
            channels = colour_channels(split.paths, probe)
        if name == "train":
            bad = {row for row, _ in probe.bad}
            sides = [s for i, s in enumerate(probe.short_sides) if i not in bad]
        files.drop(name, [row for row, _ in probe.bad], [msg for _, msg in probe.bad])
    return channels, int(statistics.median_low(sides))


def _decode_all(
    files: _Files, channels: int, size: int, workers: int, in_memory: bool
) -> dict[str, Samples]:
    """Decode every split (in memory), or only check the files (streaming with skip_bad); files that
    fail to decode are dropped (or raise)."""
    samples: dict[str, Samples] = {}
    for name, split in list(files.splits.items()):
        decoded = None
        if in_memory or files.skip_bad:  # streaming without skip_bad: a bad file is named when reached
            decoded, good, bad = decode_split(
                split, channels, size, num_workers=workers, skip_bad=files.skip_bad, keep_pixels=in_memory
            )
            files.drop(name, sorted(set(range(len(split))) - set(good)), bad)
            split = files.splits[name]
        if in_memory and decoded is not None:
            samples[name] = InMemorySamples(decoded, split.labels)
        else:
            samples[name] = StreamedSamples(split, channels, size, workers)
    return samples


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | None = None,
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
        image_size: side of the images the model sees; ``None``: the median shorter side of the
            training images, at most :data:`DEFAULT_MAX_IMAGE_SIZE` (224) and ``resize_size``.
        resize_size: side of the base images (shorter side resized, centre square kept; evaluation takes
            the centre ``image_size`` crop; ImageNet: 256 / 224). Default: ``image_size``.
        channels: 1 (grey) or 3 (RGB); ``None``: 1 when every image is grey, else 3.
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

    Raises: ``DatasetNotFoundError`` (no ``train/``, no classes, an empty class, a split without
    images); ``ImageFileError`` (an unreadable or non-regular file without ``skip_bad_images``, or a
    split whose images are all unreadable; named in the message).
    """
    say = log or (lambda _msg: None)
    _check_geometry(channels, image_size)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    files = _Files(_scan(root), skip_bad_images, say)
    chans, size, base = _geometry(files, workers, channels, image_size, resize_size)
    needed = sum(len(s) for s in files.splits.values()) * chans * base * base
    where, reason = _choose_storage(storage, needed, memory_budget)
    classes = files.splits["train"].classes
    say(_summary_line(root, files, chans, size, image_size is None, f"{where}: {reason}"))
    splits = _decode_all(files, chans, base, workers, where == "memory")
    if mean is None or std is None:
        mean, std = _train_stats(splits["train"], chans, base, stats_images, workers)
    train_augment = ResizedCropAugment(size, random_crop=random_crop, scale=crop_scale, flip=flip, mean=mean, std=std)
    return ImageFolderData(
        name=IMAGE_FOLDER, classes=classes, in_channels=chans, image_size=size, root=Path(root), splits=splits,
        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), fingerprint=files.fingerprint(classes),
        train_augment=train_augment, eval_augment=ResizedCropAugment(size, mean=mean, std=std),
        resize_size=base, storage=where, reason=reason, skipped=files.skipped,
    )


def _check_geometry(channels: int | None, image_size: int | None) -> None:
    """Refuse impossible ``channels`` / ``image_size`` before any file is read."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if image_size is not None:
        _positive(image_size, "image_size")


def _geometry(
    files: _Files, workers: int, channels: int | None, image_size: int | None, resize_size: int | None
) -> tuple[int, int, int]:
    """(channels, image size, base size): the given ones, else decided from the images' headers."""
    found_channels, median_side = _probe(files, workers)
    size = image_size or max(1, min(median_side, DEFAULT_MAX_IMAGE_SIZE, resize_size or DEFAULT_MAX_IMAGE_SIZE))
    base = size if resize_size is None else _positive(resize_size, "resize_size")
    return channels or found_channels, size, base


def _summary_line(root: object, files: _Files, chans: int, size: int, size_chosen: bool, path: str) -> str:
    """The one log line on a scanned folder: classes, images per split, the shape and the storage path."""
    counts = ", ".join(f"{len(s)} {name}" for name, s in files.splits.items())
    chosen = f" (image size {size}: the images' median shorter side, at most {DEFAULT_MAX_IMAGE_SIZE})"
    classes = files.splits["train"].classes
    return (
        f"image folder {root}: {len(classes)} classes, {counts} images -> {chans}x{size}x{size}"
        f"{chosen if size_chosen else ''}; {path}"
    )
