"""Image folders in the ImageNet layout: scanning, and decoding with Pillow to fixed-size uint8 tensors.

Pillow is imported only when images are read (``pip install pillow`` where it is missing).

Layout::

    DIR/train/<class>/**/*.png|jpg|jpeg|webp|bmp   (any case of the extension)
    DIR/val/<class>/...                            (optional)
    DIR/test/<class>/...                           (optional)

Classes are the sorted folder names of ``DIR/train``; ``val`` and ``test`` use the same class list
(a class folder there that ``train`` lacks is an error). Files are listed in sorted order, so the
index of every image, and hence every loader order, is a function of the folder's content only.

Decoding (:func:`decode_image`) is the same for every path: Pillow opens the file, converts it to
``channels`` channels (grey ``L`` or ``RGB``; palette, alpha and 16-bit images included), resizes
the shorter side to ``size`` (bilinear) and takes the centre ``size x size`` square. The result is
the "base" image that training crops and evaluation centre-crops (:mod:`.image_augment`).

A file Pillow cannot read raises :class:`ImageFileError` naming the file; a
``DatasetFormatError``, so the command line prints one line. No torchvision anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .datasets import DatasetNotFoundError
from .readers import DatasetFormatError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "FolderImages",
    "ImageFileError",
    "ImageFolderSplit",
    "collate_decoded",
    "decode_image",
    "find_splits",
    "guess_channels",
    "scan_split",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
"""File name endings read as images (compared case-insensitively)."""

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
"""Sub-folders of an image-folder data set; ``train`` is required."""

if TYPE_CHECKING:
    from PIL import Image

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SKIP_HINT = "Replace or delete the file, or pass --skip-bad-images to leave such files out."


class ImageFileError(DatasetFormatError):
    """An image file cannot be decoded (damaged, truncated, or not an image); the message names it."""


def _pillow() -> Any:
    # Pillow is needed only for image folders: imported when one is read, with a clear error
    # (a ModuleNotFoundError, which the command line prints as one line) where it is missing.
    try:
        from PIL import Image
    except ImportError:
        raise ModuleNotFoundError(
            "image folders are decoded with Pillow, which is not installed: pip install pillow", name="PIL"
        ) from None
    return Image


@dataclass(frozen=True)
class ImageFolderSplit:
    """The files of one split: ``paths[i]`` has label ``labels[i]`` (an index into ``classes``)."""

    directory: Path
    classes: tuple[str, ...]
    paths: tuple[str, ...] = field(repr=False)
    labels: torch.Tensor = field(repr=False)  # int64 (N,)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, indices: torch.Tensor | Sequence[int]) -> ImageFolderSplit:
        """The samples ``indices`` (in that order), e.g. for a subset or a train/val split."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        paths = tuple(self.paths[i] for i in idx.tolist())
        return ImageFolderSplit(self.directory, self.classes, paths, self.labels[idx])

    def with_labels(self, labels: torch.Tensor) -> ImageFolderSplit:
        """The same files with other labels (e.g. after label noise)."""
        if labels.shape != self.labels.shape:
            raise ValueError(f"expected {tuple(self.labels.shape)} labels, got {tuple(labels.shape)}")
        return ImageFolderSplit(self.directory, self.classes, self.paths, labels.to(torch.int64))


def find_splits(root: str | os.PathLike[str]) -> dict[str, Path]:
    """The split folders present under ``root`` (``train`` first); a clear error without ``train``."""
    base = Path(root).expanduser()
    splits = {name: base / name for name in SPLIT_NAMES if (base / name).is_dir()}
    if "train" not in splits:
        state = "does not exist" if not base.is_dir() else "has no train/ sub-folder"
        raise DatasetNotFoundError(
            f"image folder {base} {state}. Expected the ImageNet layout: {base}/train/<class>/<image> "
            f"(and optionally {base}/val/<class>/... and {base}/test/<class>/...), images ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (any case)."
        )
    return splits


def _image_files(class_dir: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, name))
    return sorted(found)


def scan_split(directory: str | os.PathLike[str], classes: Sequence[str] | None = None) -> ImageFolderSplit:
    """List the images of one split folder.

    Args:
        directory: holds one sub-folder per class.
        classes: the class list to label with (that of ``train`` for ``val`` / ``test``); ``None``:
            the sorted sub-folder names (then every class must hold at least one image).

    Raises:
        DatasetNotFoundError: no class folders, an empty training class, or a class unknown to ``classes``.
    """
    d = Path(directory)
    names = sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DatasetNotFoundError(f"{d} holds no class folders (expected {d}/<class>/<image>)")
    known = tuple(names) if classes is None else tuple(classes)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DatasetNotFoundError(
            f"{d} has class folders that train/ lacks: {', '.join(unknown[:10])}"
            f"{' ...' if len(unknown) > 10 else ''}. Every class must have training images."
        )
    index = {n: i for i, n in enumerate(known)}
    paths: list[str] = []
    labels: list[int] = []
    empty = []
    for name in names:
        files = _image_files(d / name)
        if not files:
            empty.append(name)
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    if classes is None and empty:
        raise DatasetNotFoundError(
            f"{d}: class folders without images ({', '.join(empty[:10])}); images must end in "
            f"{', '.join(IMAGE_EXTENSIONS)} (any case)"
        )
    return ImageFolderSplit(d, known, tuple(paths), torch.tensor(labels, dtype=torch.int64))


def _is_grey(img: Image.Image) -> bool:
    if img.mode in _GREY_MODES:
        return True
    img.draft("RGB", (64, 64))
    rgb = np.asarray(img.convert("RGB"))  # grey content stored as colour (WebP, many JPEGs)
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def guess_channels(paths: Sequence[str], limit: int = 64) -> int:
    """1 when ``limit`` files spread evenly over ``paths`` are all grey (grey modes, or colour modes
    with equal channels), else 3."""
    if not paths:
        return 3
    step = max(1, len(paths) // limit)
    pil = _pillow()
    for p in paths[::step][:limit]:
        try:
            with pil.open(p) as img:
                if not _is_grey(img):
                    return 3
        except Exception:  # an unreadable file is reported when it is decoded
            continue
    return 1


def _convert(img: Image.Image, channels: int) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # converting a transparent palette image directly warns
    if img.mode.startswith("I;16"):
        img = img.convert("I")
    if img.mode in ("I", "F"):  # 16-bit grey: keep the high byte
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _pillow().Resampling.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def decode_image(path: str | os.PathLike[str], channels: int, size: int) -> torch.Tensor:
    """The base image of ``path``: uint8 ``(channels, size, size)`` (see the module docstring).

    Raises:
        ImageFileError: Pillow cannot read the file; the message names it.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    pil = _pillow()
    try:
        with pil.open(path) as img:
            img.draft("L" if channels == 1 else "RGB", (size, size))  # JPEG: decode at a reduced scale
            img = _resize_center_crop(_convert(img, channels), size)
            arr = np.array(img, dtype=np.uint8)
    # Untrusted files: Pillow raises many exception types on damaged data (OSError, SyntaxError,
    # struct.error, IndexError, DecompressionBombError, ...), all meaning "not a readable image".
    except Exception as exc:
        raise ImageFileError(
            f"{path}: not a readable image ({type(exc).__name__}: {exc}). {_SKIP_HINT}"
        ) from None
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1).contiguous()


class FolderImages(torch.utils.data.Dataset):
    """Map-style data set over a split's files, for ``torch.utils.data.DataLoader`` workers.

    Item ``i`` is ``(uint8 (C, size, size) image, label, "")``, or ``(None, label, message)`` when the
    file cannot be read: errors travel to the main process as data, so it can raise one clean
    :class:`ImageFileError` (or count the file) instead of a worker's traceback.
    """

    def __init__(self, split: ImageFolderSplit, channels: int, size: int) -> None:
        self.paths = split.paths
        self.labels = split.labels.tolist()
        self.channels = channels
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        try:
            return decode_image(self.paths[i], self.channels, self.size), self.labels[i], ""
        except ImageFileError as exc:
            return None, self.labels[i], str(exc)


def collate_decoded(
    items: Sequence[tuple[torch.Tensor | None, int, str]],
) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[int, str]]]:
    """Stack items of :class:`FolderImages`: ``(images or None, labels, [(row, message), ...])``.

    Rows of unreadable files are zero images; ``images`` is ``None`` only for an empty batch.
    """
    errors = [(row, msg) for row, (_, _, msg) in enumerate(items) if msg]
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.int64)
    good = next((img for img, _, _ in items if img is not None), None)
    if good is None:
        return None, labels, errors
    images = torch.stack([img if img is not None else torch.zeros_like(good) for img, _, _ in items])
    return images, labels, errors
