"""Data files are bounded before memory is spent; CIFAR pickles cannot run code."""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest
from testkit import FASHION_DIR, run_python

from friendly_sam.data import readers
from friendly_sam.data.readers import DatasetFormatError, parse_cifar_batch, read_file_bytes, read_idx

BOMB_ZEROS = 400 << 20  # 400 MB of zeros behind a header announcing 10 images (gzip: ~400 kB)


def _idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def _write_gzip(path: Path, head: bytes, zeros: int) -> Path:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    with open(path, "wb") as f:
        f.write(comp.compress(head))
        block = bytes(1 << 20)
        for _ in range(zeros >> 20):
            f.write(comp.compress(block))
        f.write(comp.flush())
    return path


@pytest.mark.slow
def test_a_gzip_bomb_is_refused_with_little_memory(tmp_path):
    bomb = _write_gzip(tmp_path / "train-images-idx3-ubyte.gz", _idx_header(10, 28, 28), BOMB_ZEROS)
    assert bomb.stat().st_size < 1 << 20
    code = f"""
import resource, sys
from friendly_sam.data.readers import read_idx, DatasetFormatError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_idx({str(bomb)!r})
except DatasetFormatError as exc:
    print("refused:", exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("peak_growth_kb", after - before)
"""
    result = run_python("-c", code, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "gzip bomb" in result.stdout and str(bomb) in result.stdout
    growth_kb = int(result.stdout.split("peak_growth_kb")[1])
    assert growth_kb < 32 * 1024, f"peak memory grew by {growth_kb} kB while refusing the bomb"


def test_a_header_announcing_too_much_is_refused_before_decompressing(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_DATA_FILE_BYTES", 1 << 20)
    path = _write_gzip(tmp_path / "big.gz", _idx_header(100000, 28, 28), 4 << 20)
    with pytest.raises(
        DatasetFormatError, match=r"big\.gz: its IDX header announces 78400016 bytes, more than"
    ):
        read_idx(path)
    other = _write_gzip(tmp_path / "other.gz", b"not an idx file at all " * 50, 4 << 20)
    with pytest.raises(DatasetFormatError, match=r"other\.gz: decompresses to more than the 1048576 bytes"):
        read_file_bytes(other)
    raw = tmp_path / "raw"
    raw.write_bytes(bytes(2 << 20))
    with pytest.raises(DatasetFormatError, match=r"raw: 2097152 bytes, more than the 1048576"):
        read_file_bytes(raw)


def test_well_formed_files_still_read(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(_idx_header(2, 3, 4) + arr.tobytes()) + gzip.compress(b""))  # 2 members
    assert read_idx(path).numpy().tolist() == arr.tolist()
    trailing = tmp_path / "y.gz"
    trailing.write_bytes(gzip.compress(_idx_header(2, 3, 4) + arr.tobytes() + b"!"))
    with pytest.raises(DatasetFormatError, match="has trailing bytes"):
        read_idx(trailing)
    if (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        assert tuple(read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz").shape) == (10000,)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_cifar_pickle_cannot_run_code_or_hold_objects(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(DatasetFormatError, match="refusing to load global"):
        parse_cifar_batch(pickle.dumps({"data": _Payload(str(marker)), "labels": [0]}), "evil_batch")
    assert not marker.exists()
    objects = np.array([object(), 1], dtype=object)
    with pytest.raises(DatasetFormatError, match="refusing to load global|object array"):
        parse_cifar_batch(pickle.dumps({"data": objects, "labels": [0, 1]}), "obj_batch")
    ok = {"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}
    images, labels = parse_cifar_batch(pickle.dumps(ok, protocol=2), "ok_batch")
    assert tuple(images.shape) == (2, 3, 32, 32) and labels.tolist() == [1, 2]


def test_a_cifar_batch_has_a_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_CIFAR_BATCH_BYTES", 1000)
    data = pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]})
    with pytest.raises(DatasetFormatError, match=r"big_batch: \d+ bytes, more than the 1000"):
        parse_cifar_batch(data, "big_batch")
    path = tmp_path / "data_batch_1"
    path.write_bytes(data)
    with pytest.raises(DatasetFormatError, match="not a regular file of at most 1000 bytes"):
        readers.read_cifar_batch(path)
