"""``fsam train --dataset imagefolder`` under torchrun with 2 processes (gloo, CPU) on real Fashion-MNIST
PNGs: the in-memory and the streaming path (each rank decoding only its part of every batch) give the
same run, and rank 0 alone writes the run directory (with classes.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_torchrun import checkpoint, finish, launch, metrics
from testkit import FASHION_DIR, needs_fashion_mnist

from friendly_sam.data.readers import read_idx

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


def _png_folder(root, per_class):
    images = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz").numpy()
    labels = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz").numpy()
    offset = 0
    for split, n in per_class.items():
        for c in range(10):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[offset : offset + n]:
                Image.fromarray(images[i]).save(d / f"{int(i):05d}.png")
        offset += n
    return root


def test_torchrun_memory_and_streaming_give_the_same_run(tmp_path):
    data = _png_folder(tmp_path / "data", {"train": 20, "test": 5})
    args = [
        "--dataset", "imagefolder", "--data-dir", str(data), "--image-size", "28", "--model", "cnn_small",
        "--method", "fsam", "--batch-size", "48", "--epochs", "2", "--threads", "1", "--quiet",
    ]  # fmt: skip
    runs = {}
    for storage, workers in (("memory", "0"), ("streaming", "1")):
        run = tmp_path / storage
        proc = launch("--out", str(run), *args, "--data-storage", storage, "--num-workers", workers)
        out = finish(proc)
        assert out.count("done:") == 1 and f"{storage}: {storage} requested" in out
        runs[storage] = run
    a, b = checkpoint(runs["memory"]), checkpoint(runs["streaming"])
    assert a["world_size"] == b["world_size"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    keys = ("train_loss", "train_acc", "lr", "test_loss", "test_acc")
    ma, mb = metrics(runs["memory"]), metrics(runs["streaming"])
    assert [[m[k] for k in keys] for m in ma] == [[m[k] for k in keys] for m in mb]
    record = json.loads((runs["streaming"] / "classes.json").read_text())
    assert record["counts"] == {"train": 200, "test": 50} and len(record["classes"]) == 10
