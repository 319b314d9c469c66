"""Validating readers for the IDX (MNIST family) and CIFAR "python" pickle formats.

Both readers load a whole file at once into a tensor: there is no per-image Python work.
Every structural problem (bad magic number, truncated payload, damaged gzip stream, wrong
shapes) raises :class:`DatasetFormatError` naming the file, because a half-downloaded data
file is by far the most common cause and the fix is always the same: fetch it again.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import stat
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DatasetFormatError",
    "read_idx",
    "parse_idx",
    "read_file_bytes",
    "read_cifar_batch",
    "parse_cifar_batch",
]

_REFETCH_HINT = "The file is damaged or incomplete: delete it and download / reinstall it."

# IDX type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte values are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_CIFAR_PIXELS = 3 * 32 * 32
# Size limits, checked before reading: the largest standard file (CIFAR-100 "train") is 155 MB, the
# largest IDX file (EMNIST-size) well under 1 GB.
MAX_DATA_FILE_BYTES = 1 << 30
MAX_CIFAR_BATCH_BYTES = 256 << 20
_CHUNK = 1 << 20  # gzip is decompressed in chunks of this size
_IDX_MAX_HEADER = 4 + 4 * 255


class DatasetFormatError(ValueError):
    """A data file exists but is not a valid file of the expected format (or is truncated)."""


def read_file_bytes(path: str | os.PathLike[str], max_bytes: int | None = None) -> bytes:
    """Return the content of ``path``, transparently gunzipped when it is a gzip file.

    Gzip is recognised by its magic bytes, not by the file name, so a raw file named
    ``*.gz`` (or a gzip file without the suffix) still loads. Sizes are bounded before memory is
    spent: at most ``max_bytes`` (default ``MAX_DATA_FILE_BYTES``) in all, and a gzipped IDX file is
    decompressed in chunks and refused as soon as it yields more than its header announces (a gzip
    bomb costs one chunk of memory, not its decompressed size).
    """
    path = Path(path)
    limit = MAX_DATA_FILE_BYTES if max_bytes is None else max_bytes
    try:
        info = path.stat()
    except OSError as exc:
        raise DatasetFormatError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DatasetFormatError(f"{path}: not a regular file. {_REFETCH_HINT}")
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            if info.st_size > limit:
                raise DatasetFormatError(
                    f"{path}: {info.st_size} bytes, more than the {limit} a data file may have. {_REFETCH_HINT}"
                )
            f.seek(0)
            return f.read()
        f.seek(0)
        try:
            return _gunzip_bounded(f, str(path), limit)
        except (EOFError, OSError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise DatasetFormatError(
                f"{path}: corrupt or truncated gzip file ({exc}). {_REFETCH_HINT}"
            ) from exc


def _idx_expected_size(head: bytes) -> int | None:
    """Total size an IDX file announces in its header, None if ``head`` is not (yet) an IDX header."""
    if len(head) < 4 or head[0:2] != b"\0\0" or head[2] not in _IDX_DTYPES or head[3] == 0:
        return None
    header = 4 + 4 * head[3]
    if len(head) < header:
        return None
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(head[3])]
    return header + math.prod(dims) * _IDX_DTYPES[head[2]].itemsize


def _gunzip_bounded(f: Any, source: str, limit: int) -> bytes:
    chunks: list[bytes] = []
    total, announced = 0, None
    with gzip.GzipFile(fileobj=f) as gz:
        while True:
            chunk = gz.read(min(_CHUNK, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if announced is None and total >= _IDX_MAX_HEADER:  # once: an IDX header bounds the rest
                announced = _idx_expected_size(b"".join(chunks)[:_IDX_MAX_HEADER]) or -1
                if announced > limit:
                    raise DatasetFormatError(
                        f"{source}: its IDX header announces {announced} bytes, more than the {limit} a "
                        f"data file may have. {_REFETCH_HINT}"
                    )
                limit = announced if announced > 0 else limit
            if total > limit:
                what = "its IDX header announces" if announced and announced > 0 else "a data file may have"
                raise DatasetFormatError(
                    f"{source}: decompresses to more than the {limit} bytes {what} (a damaged file or a "
                    f"gzip bomb); stopped reading. {_REFETCH_HINT}"
                )


def parse_idx(data: bytes, source: str = "<bytes>") -> torch.Tensor:
    """Decode an in-memory IDX file (already decompressed) into a tensor.

    Checks the magic number, the element type, the number of dimensions and that the payload
    size is exactly what the header announces. ``source`` names the file in error messages.
    uint8 data stay uint8; other types are converted to the matching native torch dtype.
    """
    if len(data) < 4:
        raise DatasetFormatError(
            f"{source}: only {len(data)} bytes, too short for an IDX header. {_REFETCH_HINT}"
        )
    zero, type_code, ndim = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DatasetFormatError(
            f"{source}: not an IDX file (magic number 0x{data[:4].hex()}; expected 0x0000TTNN with a "
            f"known type TT in {sorted(hex(t) for t in _IDX_DTYPES)} and NN >= 1 dimensions). {_REFETCH_HINT}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{source}: truncated IDX header ({len(data)} bytes). {_REFETCH_HINT}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetFormatError(
            f"{source}: IDX payload {what}: header says shape {dims} of {dtype.name} "
            f"({expected} bytes in all) but the file has {len(data)} bytes. {_REFETCH_HINT}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    # Copy into a writable, native-endian array (frombuffer on bytes is read-only).
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file (gzipped or raw) into a tensor, validating it (see :func:`parse_idx`)."""
    return parse_idx(read_file_bytes(path), str(path))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays: a data file must not be able to run code."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        key = (module, name)
        if key not in allowed:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: not part of a CIFAR batch"
            )
        return allowed[key]


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import codecs

    try:  # numpy >= 2 moved numpy.core to numpy._core; files written by numpy 1 name the old path
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = multiarray._reconstruct
        table[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        if hasattr(numeric, "_frombuffer"):
            table[(mod, "_frombuffer")] = numeric._frombuffer
    table[("_codecs", "encode")] = codecs.encode  # bytes pickled by Python 3 with protocol 2
    return table


def _plain_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for the unpickler, refusing object dtypes (their elements would be arbitrary)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object array: a CIFAR batch holds plain numbers")
    return dtype


def _get(d: dict[Any, Any], key: str) -> Any:
    # The original files were written by Python 2; depending on the unpickling encoding the
    # keys come back as str or as bytes.
    if key in d:
        return d[key]
    return d.get(key.encode())


def parse_cifar_batch(data: bytes, source: str = "<bytes>") -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an in-memory CIFAR-10/100 "python" batch into ``(images, labels)``.

    ``images`` is uint8 ``(N, 3, 32, 32)``, ``labels`` int64 ``(N,)``. The label key is
    ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100; coarse labels are ignored).
    """
    if len(data) > MAX_CIFAR_BATCH_BYTES:
        raise DatasetFormatError(
            f"{source}: {len(data)} bytes, more than the {MAX_CIFAR_BATCH_BYTES} a CIFAR batch may have. "
            f"{_REFETCH_HINT}"
        )
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any failure to unpickle means a damaged or foreign file
        raise DatasetFormatError(
            f"{source}: not a readable CIFAR python batch ({type(exc).__name__}: {exc}). {_REFETCH_HINT}"
        ) from exc
    if not isinstance(obj, dict):
        raise DatasetFormatError(
            f"{source}: expected a pickled dict, got {type(obj).__name__}. {_REFETCH_HINT}"
        )
    images = _get(obj, "data")
    labels = _get(obj, "labels")
    if labels is None:
        labels = _get(obj, "fine_labels")
    if images is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in obj)
        raise DatasetFormatError(
            f"{source}: CIFAR batch needs keys 'data' and 'labels' or 'fine_labels'; found {keys}. {_REFETCH_HINT}"
        )
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise DatasetFormatError(f"{source}: 'data' must be a uint8 numpy array. {_REFETCH_HINT}")
    n = images.shape[0] if images.ndim >= 1 else 0
    if images.ndim == 2 and images.shape[1] == _CIFAR_PIXELS:
        images = images.reshape(n, 3, 32, 32)  # rows are R(1024) G(1024) B(1024), row-major
    elif images.shape[1:] != (3, 32, 32):
        raise DatasetFormatError(
            f"{source}: 'data' has shape {images.shape}, expected (N, {_CIFAR_PIXELS}). {_REFETCH_HINT}"
        )
    try:
        label_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DatasetFormatError(f"{source}: labels are not integers ({exc}). {_REFETCH_HINT}") from exc
    if label_arr.shape[0] != n:
        raise DatasetFormatError(f"{source}: {n} images but {label_arr.shape[0]} labels. {_REFETCH_HINT}")
    if n and label_arr.min() < 0:
        raise DatasetFormatError(f"{source}: negative labels. {_REFETCH_HINT}")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(label_arr)


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR "python" batch file (e.g. ``data_batch_1`` or ``train``); see :func:`parse_cifar_batch`."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise DatasetFormatError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CIFAR_BATCH_BYTES:
        raise DatasetFormatError(
            f"{path}: not a regular file of at most {MAX_CIFAR_BATCH_BYTES} bytes. {_REFETCH_HINT}"
        )
    return parse_cifar_batch(path.read_bytes(), str(path))
