"""Finding the images of a folder in the ImageNet layout: splits, classes, and the files of each class.

Layout::

    DIR/train/<class>/**/*.png|jpg|jpeg|webp|bmp   (any case of the extension)
    DIR/val/<class>/...                            (optional)
    DIR/test/<class>/...                           (optional)

Classes are the sorted folder names of ``DIR/train``; ``val`` and ``test`` use the same class list (a
class folder there that ``train`` lacks is an error). Files are listed in sorted order, so the index of
every image, and hence every loader order, is a function of the folder's content only.

What is read, and how links are treated (nothing is opened while scanning; only ``lstat`` / ``stat``):

- Only regular files are images. A FIFO, socket or device named ``x.png`` is never opened (opening a
  FIFO blocks for ever): it is a bad file, named in an :class:`ImageFileError` (or skipped and listed
  with ``--skip-bad-images``), like a damaged image. Names starting with ``.`` are ignored.
- Symbolic links are followed, also links leading out of ``DIR`` (a data set assembled from links
  into a shared store is common). Each real directory is walked once per split, so a link to a parent
  folder (a loop) or a second link to a folder already walked adds nothing; each real file counts once
  per split (a second link to it is ignored). A broken link is a bad file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .catalog import DatasetNotFoundError
from .readers import DatasetFormatError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "FolderScan",
    "ImageFileError",
    "ImageFolderSplit",
    "find_splits",
    "scan_split",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
"""File name endings read as images (compared case-insensitively)."""

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
"""Sub-folders of an image-folder data set; ``train`` is required."""

SKIP_HINT = "Replace or delete the file, or pass --skip-bad-images to leave such files out."


class ImageFileError(DatasetFormatError):
    """An image file cannot be read (damaged, truncated, not an image, not a regular file); the message
    names it. Under ``torchrun`` every rank that meets it raises this one exception."""


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


@dataclass(frozen=True)
class FolderScan:
    """One scanned split: the readable candidates (``split``), their sizes in bytes, and the entries that
    are not regular files (``(path, why)``), which are never opened."""

    split: ImageFolderSplit
    sizes: tuple[int, ...] = field(repr=False)
    not_regular: tuple[tuple[str, str], ...] = ()


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


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return what
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


Entry = tuple[str, int, tuple[int, int]]  # path, size in bytes, (device, inode) of the real file


class _Walk:
    """The image files under the class folders of one split; each real directory walked once, and never
    a class folder from inside another (a link to it, or to the split folder, adds nothing)."""

    def __init__(self, class_dirs: Sequence[Path]) -> None:
        self.class_roots = {_identity(d) for d in class_dirs}
        self.dirs: set[tuple[int, int]] = set()
        self.not_regular: list[tuple[str, str]] = []

    def class_files(self, class_dir: Path) -> list[Entry]:
        found: list[Entry] = []
        self._walk(str(class_dir), found, top=True)
        return sorted(found)

    def _walk(self, directory: str, found: list[Entry], top: bool = False) -> None:
        try:
            key = _identity(directory)
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return  # a link loop or an unreadable folder: nothing more under it
        if key in self.dirs or (key in self.class_roots and not top):
            return  # walked already (a loop, a second link), or another class's own folder
        self.dirs.add(key)
        for entry in entries:
            if not entry.name.startswith("."):
                self._entry(entry, found)

    def _entry(self, entry: os.DirEntry, found: list[Entry]) -> None:
        try:
            st = os.stat(entry.path)  # follows a link once; the target's type decides
        except OSError as exc:
            if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                self.not_regular.append((entry.path, f"a broken link ({exc.strerror})"))
            return
        if stat.S_ISDIR(st.st_mode):
            self._walk(entry.path, found)
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            if stat.S_ISREG(st.st_mode):
                found.append((entry.path, st.st_size, (st.st_dev, st.st_ino)))
            else:
                self.not_regular.append((entry.path, _kind(st.st_mode)))


def _identity(path: str | os.PathLike[str]) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _once(per_class: list[list[Entry]]) -> list[list[Entry]]:
    """Each real file once: where one is reached under several names, the name it has without links
    keeps it (else the first in class and path order)."""
    names: dict[tuple[int, int], list[str]] = {}
    for entries in per_class:
        for path, _, key in entries:
            names.setdefault(key, []).append(path)
    owner = {}
    for key, paths in names.items():
        real = [p for p in paths if os.path.realpath(p) == os.path.abspath(p)] if len(paths) > 1 else paths
        owner[key] = (real or paths)[0]
    return [[e for e in entries if owner[e[2]] == e[0]] for entries in per_class]


def _class_names(d: Path, classes: Sequence[str] | None) -> tuple[list[str], tuple[str, ...]]:
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
    return names, known


def scan_split(directory: str | os.PathLike[str], classes: Sequence[str] | None = None) -> FolderScan:
    """List the images of one split folder (see the module docstring for what counts).

    Args:
        directory: holds one sub-folder per class.
        classes: the class list to label with (that of ``train`` for ``val`` / ``test``); ``None``:
            the sorted sub-folder names (then every class must hold at least one image).

    Raises:
        DatasetNotFoundError: no class folders, an empty training class, a class unknown to
            ``classes``, or a split without any image file.
    """
    d = Path(directory)
    names, known = _class_names(d, classes)
    index = {n: i for i, n in enumerate(known)}
    walk = _Walk([d / name for name in names])
    per_class = _once([walk.class_files(d / name) for name in names])
    files = [(path, size) for entries in per_class for path, size, _ in entries]
    labels = [index[name] for name, entries in zip(names, per_class) for _ in entries]
    empty = [name for name, entries in zip(names, per_class) if not entries]
    if classes is None and empty:
        raise DatasetNotFoundError(
            f"{d}: class folders without images ({', '.join(empty[:10])}); images must end in "
            f"{', '.join(IMAGE_EXTENSIONS)} (any case)"
        )
    if not files and not walk.not_regular:
        raise DatasetNotFoundError(
            f"{d} has class folders but no images (files ending in {', '.join(IMAGE_EXTENSIONS)}): add "
            f"images or remove the {d.name}/ folder"
        )
    split = ImageFolderSplit(d, known, tuple(p for p, _ in files), torch.tensor(labels, dtype=torch.int64))
    return FolderScan(split, tuple(n for _, n in files), tuple(walk.not_regular))
