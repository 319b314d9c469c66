"""Helpers for the data tests: write small files in the IDX and CIFAR "python" formats."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode an array as an IDX file (big-endian)."""
    code = _IDX_CODES[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_mnist_like(
    directory: Path, n_train: int = 12, n_test: int = 6, seed: int = 0, gz: bool = True, size: int = 28
) -> dict[str, np.ndarray]:
    """Write the four IDX files of a small MNIST-like data set; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        IDX_NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        IDX_NAMES[2]: rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        IDX_NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(directory / name, arr, gz=gz)
    return arrays


def cifar_dict(n: int, num_classes: int, seed: int, bytes_keys: bool, fine: bool) -> dict:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, n)]
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    d = {
        k("batch_label"): k("testing batch"),
        k("data"): data,
        k("filenames"): [k(f"img_{i}.png") for i in range(n)],
    }
    if fine:
        d[k("fine_labels")] = labels
        d[k("coarse_labels")] = [v // 5 for v in labels]
    else:
        d[k("labels")] = labels
    return d


def write_pickle(path: Path, obj: object, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def write_cifar10(directory: Path, n: int = 4, seed: int = 0) -> list[dict]:
    """data_batch_1..5 and test_batch with ``n`` images each (bytes keys, like the real files)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    dicts = []
    for i, name in enumerate(names):
        d = cifar_dict(n, 10, seed + i, bytes_keys=True, fine=False)
        write_pickle(directory / name, d)
        dicts.append(d)
    return dicts


def write_cifar100(directory: Path, n_train: int = 8, n_test: int = 4, seed: int = 0) -> list[dict]:
    dicts = [
        cifar_dict(n_train, 100, seed, bytes_keys=False, fine=True),
        cifar_dict(n_test, 100, seed + 1, bytes_keys=False, fine=True),
    ]
    write_pickle(directory / "train", dicts[0])
    write_pickle(directory / "test", dicts[1])
    return dicts
