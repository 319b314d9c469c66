"""Finding, verifying, downloading and loading the image-classification data sets.

``load_dataset(name)`` returns a :class:`Dataset` whose images are whole uint8 tensors
``(N, C, H, W)`` in memory: the training loop then works on tensors only (see ``loader.py``).

Where the files are looked for, in order (the first directory holding every needed file wins):

1. the ``root`` argument,
2. the environment variable ``FSAM_DATA_DIR`` (several directories separated by ``os.pathsep``),
3. the per-user cache ``$XDG_CACHE_HOME/friendly_sam`` (default ``~/.cache/friendly_sam``),
4. system locations: ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``).

For each of the first three, ``<dir>/<name>/`` is tried before ``<dir>/`` itself, together with the
sub-folders the usual distributions create (``cifar-10-batches-py``, ``cifar-100-python``,
torchvision's ``MNIST/raw`` and ``FashionMNIST/raw``, the npm tarball's ``package/data``).

Integrity: with ``verify=True`` (the default) every file's *content* is checked against the known
MD5 of the standard release. For IDX files the MD5 is taken of the decompressed payload, so
gzipped and raw copies (and Debian's re-compressed ``.gz`` files, whose bytes differ from the
upstream ``.gz``) are all recognised. This costs ~0.1 s for Fashion-MNIST since the bytes are in
memory anyway, and it also catches MNIST files placed where Fashion-MNIST is expected (both use
the same file names). Pass ``verify=False`` to load non-standard files (e.g. a reduced copy).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .batch_augment import BatchAugment
from .catalog import (
    SPECS,
    DataFile,
    DatasetNotFoundError,
    Spec,
    canonical_name,
    check_md5,
    default_cache_dir,
)
from .download import download_dest, download_files
from .identity import builtin_fingerprint
from .image_data import ImageData, InMemorySamples, Samples
from .readers import MAX_CIFAR_BATCH_BYTES, DatasetFormatError, parse_cifar_batch, parse_idx, read_file_bytes

__all__ = ["SYSTEM_DIRS", "channel_stats", "load_dataset", "search_dirs"]

# Data-set directories outside the searched roots, tried last. Module-level so tests (and
# distributions with other layouts) can change it.
SYSTEM_DIRS: dict[str, list[str]] = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist"]}


def _roots(root: str | os.PathLike[str] | None) -> list[Path]:
    roots: list[Path] = []
    if root is not None:
        roots.append(Path(root).expanduser())
    env = os.environ.get("FSAM_DATA_DIR")
    if env:
        roots.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p)
    roots.append(default_cache_dir())
    return roots


def search_dirs(name: str, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every directory searched for data set ``name``, in search order (see the module docstring)."""
    spec = SPECS[canonical_name(name)]
    dirs: list[Path] = []
    for base in _roots(root):
        for d in (base / spec.name, base):
            dirs.extend([d, *(d / sub for sub in spec.subdirs)])
    dirs.extend(Path(p) for p in SYSTEM_DIRS.get(spec.name, []))
    seen: set[Path] = set()
    return [d for d in dirs if not (d in seen or seen.add(d))]


def _locate(spec: Spec, directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Map each needed file to its path in ``directory``; also return the missing names."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for f in spec.files:
        # Raw before .gz: same content, but no decompression needed.
        candidates = [directory / f.name] + ([directory / (f.name + ".gz")] if spec.fmt == "idx" else [])
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(f.name)
        else:
            found[f.name] = path
    return found, missing


def _not_found_message(spec: Spec, dirs: Sequence[Path], extra: str = "") -> str:
    lines = [f"{spec.title} not found{extra}."]
    suffix = " (each may be gzipped, NAME.gz)" if spec.fmt == "idx" else ""
    lines.append(f"Needed files{suffix}: {', '.join(f.name for f in spec.files)}")
    lines.append("Searched directories (in order):")
    for d in dirs:
        if not d.is_dir():
            lines.append(f"  {d}  (does not exist)")
        else:
            _, missing = _locate(spec, d)
            lines.append(f"  {d}  (missing: {', '.join(missing)})")
    lines.append("How to get them:")
    lines.append(spec.how_to_get)
    return "\n".join(lines)


def _find(spec: Spec, root: str | os.PathLike[str] | None) -> dict[str, Path] | None:
    for d in search_dirs(spec.name, root):
        if d.is_dir():
            found, missing = _locate(spec, d)
            if not missing:
                return found
    return None

def _load_split(
    spec: Spec, files: tuple[DataFile, ...], paths: dict[str, Path], verify: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.fmt == "idx":
        img_f, lab_f = files
        tensors = []
        for f in (img_f, lab_f):
            data = read_file_bytes(paths[f.name])
            if verify:
                check_md5(spec, f, paths[f.name], data)
            tensors.append(parse_idx(data, str(paths[f.name])))
        images, labels = tensors
        if images.dim() != 3 or images.dtype != torch.uint8:
            raise DatasetFormatError(
                f"{paths[img_f.name]}: expected uint8 images of shape (N, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.dim() != 1:
            raise DatasetFormatError(
                f"{paths[lab_f.name]}: expected 1-d labels, got shape {tuple(labels.shape)}"
            )
        if labels.shape[0] != images.shape[0]:
            raise DatasetFormatError(
                f"{paths[img_f.name]} holds {images.shape[0]} images but {paths[lab_f.name]} "
                f"{labels.shape[0]} labels: the two files do not belong together."
            )
        images = images.unsqueeze(1)  # (N, 1, H, W)
        labels = labels.to(torch.int64)
    else:
        parts = []
        for f in files:
            data = read_file_bytes(paths[f.name], MAX_CIFAR_BATCH_BYTES)  # bounded before reading
            if verify:
                check_md5(spec, f, paths[f.name], data)
            parts.append(parse_cifar_batch(data, str(paths[f.name])))
        images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if labels.numel() and int(labels.max()) >= spec.num_classes:
        src = ", ".join(str(paths[f.name]) for f in files)
        raise DatasetFormatError(
            f"{src}: label {int(labels.max())} out of range for {spec.num_classes} classes."
        )
    return images.contiguous(), labels

def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 ``(N, C, H, W)`` images scaled to [0, 1].

    Computed exactly from a 256-bin histogram per channel (``bincount`` on uint8 is much faster
    than summing squares, and needs no large temporary).
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).cpu().to(torch.float64)
        total = max(float(hist.sum()), 1.0)
        mean = float((hist * values).sum()) / total
        var = max(float((hist * (values - mean) ** 2).sum()) / total, 0.0)
        means.append(mean / 255.0)
        stds.append(var**0.5 / 255.0)
    return tuple(means), tuple(stds)

def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    verify: bool = True,
) -> ImageData:
    """Load a whole data set (``fashion-mnist``, ``mnist``, ``cifar10`` or ``cifar100``) into memory.

    Args:
        name: data-set name (case-insensitive; ``_`` and ``-`` are interchangeable).
        root: directory tried first; see the module docstring for the full search order.
        download: when the files are not found, fetch the standard release (MD5-checked) into
            ``<root or FSAM_DATA_DIR or cache>/<name>/``.
        verify: check each file's content against the standard release's MD5.

    Raises:
        ValueError: unknown name.
        DatasetNotFoundError: files missing (the message lists them, the directories searched and
            how to get them); :class:`DatasetDownloadError` when ``download=True`` failed.
        DatasetFormatError: a file is truncated, corrupt or not the expected data set.
    """
    spec = SPECS[canonical_name(name)]
    paths = _find(spec, root)
    if paths is None and download:
        download_files(spec, download_dest(spec, root))
        paths = _find(spec, root)
    if paths is None:
        raise DatasetNotFoundError(_not_found_message(spec, search_dirs(spec.name, root)))

    train_x, train_y = _load_split(spec, spec.train, paths, verify)
    test_x, test_y = _load_split(spec, spec.test, paths, verify)
    for split, x in (("train", train_x), ("test", test_x)):
        if tuple(x.shape[1:]) != (spec.in_channels, spec.image_size, spec.image_size):
            raise DatasetFormatError(
                f"{spec.title} {split} images have shape {tuple(x.shape[1:])}, expected "
                f"{(spec.in_channels, spec.image_size, spec.image_size)}; files: "
                + ", ".join(str(paths[f.name]) for f in getattr(spec, split))
            )
    mean, std = channel_stats(train_x)
    splits: dict[str, Samples] = {
        "train": InMemorySamples(train_x, train_y),
        "test": InMemorySamples(test_x, test_y),
    }
    data = ImageData(
        name=spec.name,
        classes=spec.class_names,
        in_channels=spec.in_channels,
        image_size=spec.image_size,
        mean=mean,
        std=std,
        splits=splits,
        train_augment=BatchAugment(mean=mean, std=std),
        eval_augment=BatchAugment(mean=mean, std=std),
        fingerprint=builtin_fingerprint(spec.name, splits),
    )
    return dataclasses.replace(data, train_augment=BatchAugment.for_dataset(data))
