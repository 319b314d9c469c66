"""Reading image files with Pillow into fixed-size uint8 tensors, and deciding the colour mode and size.

Pillow is imported only when images are read (``pip install pillow`` where it is missing).

Decoding (:func:`decode_image`) is the same for every path: the file is opened only if it is a regular
file (checked on the open descriptor, which never blocks), Pillow reads it, the EXIF orientation is
applied (a photo taken upright is upright), it is converted to ``channels`` channels (grey ``L`` or
``RGB``; palette, alpha and 16-bit images included), the shorter side is resized to ``size`` (bilinear)
and the centre ``size x size`` square kept. The result is the "base" image that training crops and
evaluation centre-crops (:mod:`.resized_crop`).

:func:`probe_images` reads every file's header once (size, mode): the colour mode is decided from every
image, not a sample, and the default image size from the images' shorter sides.

A file Pillow cannot read raises :class:`~friendly_sam.data.folder_scan.ImageFileError` naming the
file; a ``DatasetFormatError``, so the command line prints one line. No torchvision anywhere.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import DataLoader

from .folder_scan import SKIP_HINT, ImageFileError, ImageFolderSplit

__all__ = [
    "FolderImages",
    "ImageProbe",
    "colour_channels",
    "collate_decoded",
    "decode_image",
    "decode_split",
    "open_regular",
    "probe_images",
]

if TYPE_CHECKING:
    from PIL import Image

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_CHUNK = 64
_ORIENTATION = 0x0112  # the EXIF tag


def _pillow() -> Any:
    # Pillow is needed only for image folders: imported when one is read, with a clear error
    # (a ModuleNotFoundError, which the command line prints as one line) where it is missing.
    try:
        import PIL.Image
        import PIL.ImageOps
    except ImportError:
        raise ModuleNotFoundError(
            "image folders are decoded with Pillow, which is not installed: pip install pillow", name="PIL"
        ) from None
    return PIL


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file; ``OSError`` otherwise. Opened without
    blocking (a FIFO put in the place of an image after the scan cannot hang the run)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def unreadable(path: str | os.PathLike[str], exc: Exception) -> str:
    """The one-line message for a file that cannot be read as an image."""
    why = "not an image format Pillow reads" if type(exc).__name__ == "UnidentifiedImageError" else str(exc)
    return f"{path}: not a readable image ({type(exc).__name__}: {why}). {SKIP_HINT}"


def _is_grey_content(img: Image.Image) -> bool:
    img.draft("RGB", (64, 64))
    rgb = np.asarray(img.convert("RGB"))  # grey content stored as colour (WebP, many JPEGs)
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


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
        img = img.resize((nw, nh), _pillow().Image.Resampling.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def decode_image(path: str | os.PathLike[str], channels: int, size: int) -> torch.Tensor:
    """The base image of ``path``: uint8 ``(channels, size, size)`` (see the module docstring).

    Raises:
        ImageFileError: not a regular file, or Pillow cannot read it; the message names it.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    pil = _pillow()
    try:
        with open_regular(path) as fh, pil.Image.open(fh) as img:
            img.draft("L" if channels == 1 else "RGB", (size, size))  # JPEG: decode at a reduced scale
            if img.getexif().get(_ORIENTATION, 1) != 1:
                img = pil.ImageOps.exif_transpose(img)  # a photo taken upright is upright
            img = _resize_center_crop(_convert(img, channels), size)
            arr = np.array(img, dtype=np.uint8)
    # Untrusted files: Pillow raises many exception types on damaged data (OSError, SyntaxError,
    # struct.error, IndexError, DecompressionBombError, ...), all meaning "not a readable image".
    except Exception as exc:
        raise ImageFileError(unreadable(path, exc)) from None
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
    chunks = [list(range(i, min(i + _CHUNK, n))) for i in range(0, n, _CHUNK)]
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




@dataclass(frozen=True)
class ImageProbe:
    """What the headers of a split's files say: per file the shorter side (after the EXIF orientation,
    which does not change it) and whether the mode is grey; ``bad`` the unreadable files ``(row, message)``."""

    short_sides: tuple[int, ...]
    grey_mode: tuple[bool, ...]
    bad: tuple[tuple[int, str], ...]


class _Headers(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, bool, str]:
        try:
            with open_regular(self.paths[i]) as fh, _pillow().Image.open(fh) as img:
                return min(img.size), img.mode in _GREY_MODES, ""
        except Exception as exc:  # any failure means "not a readable image" (see decode_image)
            return 0, True, unreadable(self.paths[i], exc)


def probe_images(paths: Sequence[str], num_workers: int = 0) -> ImageProbe:
    """Read the header of every file (in parallel with ``num_workers`` processes; nothing is decoded)."""
    chunks = [list(range(i, min(i + _CHUNK * 4, len(paths)))) for i in range(0, len(paths), _CHUNK * 4)]
    loader = DataLoader(
        _Headers(paths), batch_sampler=chunks, num_workers=num_workers, collate_fn=list,
        generator=torch.Generator(),
    )
    items = [item for batch in loader for item in batch]
    bad = tuple((i, msg) for i, (_, _, msg) in enumerate(items) if msg)
    return ImageProbe(tuple(s for s, _, _ in items), tuple(g for _, g, _ in items), bad)


def colour_channels(paths: Sequence[str], probe: ImageProbe) -> int:
    """1 when every readable image is grey (a grey mode, or a colour mode with equal channels), else 3.
    Decided from every image: headers first, then the content of colour-mode files until one is colour."""
    bad = {row for row, _ in probe.bad}
    for i, grey in enumerate(probe.grey_mode):
        if grey or i in bad:
            continue
        try:
            with open_regular(paths[i]) as fh, _pillow().Image.open(fh) as img:
                if not _is_grey_content(img):
                    return 3
        except Exception:  # readable header, damaged content: reported when the file is decoded
            continue
    return 1
