"""IDX and CIFAR-pickle readers: round trips and clear errors on damaged files."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from data_testutils import cifar_dict, idx_bytes, write_idx, write_pickle

from friendly_sam.data import DatasetFormatError
from friendly_sam.data.readers import parse_idx, read_cifar_batch, read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip_uint8(tmp_path, gz):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr, gz=gz)
    t = read_idx(path)
    assert t.dtype == torch.uint8 and tuple(t.shape) == (5, 7, 3)
    assert np.array_equal(t.numpy(), arr)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_other_types_are_big_endian(dtype):
    arr = (np.arange(12).reshape(3, 4) - 5).astype(dtype)
    t = parse_idx(idx_bytes(arr))
    assert np.array_equal(t.numpy(), arr)


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(6, dtype=np.uint8)
    raw_named_gz = tmp_path / "a.gz"
    raw_named_gz.write_bytes(idx_bytes(arr))
    gz_without_suffix = tmp_path / "b"
    gz_without_suffix.write_bytes(gzip.compress(idx_bytes(arr)))
    assert np.array_equal(read_idx(raw_named_gz).numpy(), arr)
    assert np.array_equal(read_idx(gz_without_suffix).numpy(), arr)


def _error(path) -> str:
    with pytest.raises(DatasetFormatError) as info:
        read_idx(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "download" in msg  # tells the user to fetch the file again
    return msg


def test_idx_truncated_payload(tmp_path):
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data[:-100])
    msg = _error(path)
    assert "truncated" in msg and "(4, 28, 28)" in msg


def test_idx_trailing_bytes(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8)) + b"junk")
    assert "trailing" in _error(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\x00",
        b"\x00\x01\x08\x01\x00\x00\x00\x01x",
        b"\x00\x00\x07\x01\x00\x00\x00\x01x",
        b"\x00\x00\x08\x00",
        b"\x00\x00\x08\x03\x00\x00",
    ],
)
def test_idx_bad_headers(tmp_path, content):
    path = tmp_path / "bad"
    path.write_bytes(content)
    _error(path)


def test_idx_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.random.default_rng(1).integers(0, 256, (20, 28, 28), dtype=np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    assert "gzip" in _error(path)


def test_idx_corrupt_gzip(tmp_path):
    data = bytearray(
        gzip.compress(idx_bytes(np.random.default_rng(1).integers(0, 256, (20, 28, 28), dtype=np.uint8)))
    )
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0xFF
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(bytes(data))
    _error(path)


@pytest.mark.parametrize("bytes_keys", [True, False])
@pytest.mark.parametrize("fine", [False, True])
def test_cifar_batch_roundtrip(tmp_path, bytes_keys, fine):
    d = cifar_dict(5, 100 if fine else 10, seed=3, bytes_keys=bytes_keys, fine=fine)
    path = write_pickle(tmp_path / "data_batch_1", d)
    images, labels = read_cifar_batch(path)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (5, 3, 32, 32)
    assert labels.dtype == torch.int64
    raw = d[b"data" if bytes_keys else "data"]
    key = (
        ("fine_labels" if fine else "labels").encode()
        if bytes_keys
        else ("fine_labels" if fine else "labels")
    )
    assert labels.tolist() == d[key]
    # Row layout of the format: 1024 red, then 1024 green, then 1024 blue values, row-major.
    assert np.array_equal(images[2, 1].numpy(), raw[2, 1024:2048].reshape(32, 32))
    assert np.array_equal(images.numpy().reshape(5, -1), raw)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batch_protocols(tmp_path, protocol):
    path = write_pickle(tmp_path / "b", cifar_dict(3, 10, 0, bytes_keys=False, fine=False), protocol=protocol)
    assert read_cifar_batch(path)[0].shape[0] == 3


def _cifar_error(path) -> str:
    with pytest.raises(DatasetFormatError) as info:
        read_cifar_batch(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_cifar_truncated(tmp_path):
    path = write_pickle(tmp_path / "data_batch_3", cifar_dict(6, 10, 0, bytes_keys=True, fine=False))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "download" in _cifar_error(path)


def test_cifar_wrong_shapes_and_keys(tmp_path):
    d = cifar_dict(4, 10, 0, bytes_keys=False, fine=False)
    d["data"] = d["data"][:, :3000]
    assert "(4, 3000)" in _cifar_error(write_pickle(tmp_path / "a", d))
    d = cifar_dict(4, 10, 0, bytes_keys=False, fine=False)
    d["labels"] = d["labels"][:3]
    assert "4 images but 3 labels" in _cifar_error(write_pickle(tmp_path / "b", d))
    d = cifar_dict(4, 10, 0, bytes_keys=False, fine=False)
    del d["labels"]
    assert "fine_labels" in _cifar_error(write_pickle(tmp_path / "c", d))
    d = cifar_dict(4, 10, 0, bytes_keys=False, fine=False)
    d["data"] = d["data"].astype(np.float32)
    assert "uint8" in _cifar_error(write_pickle(tmp_path / "d", d))
    assert "dict" in _cifar_error(write_pickle(tmp_path / "e", [1, 2]))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_refuses_arbitrary_globals(tmp_path):
    path = write_pickle(tmp_path / "data_batch_1", {"data": _Evil()})
    assert "refusing" in _cifar_error(path)
