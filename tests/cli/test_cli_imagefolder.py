"""`fsam train --dataset imagefolder` end to end through subprocesses, on real Fashion-MNIST images written
as PNG files in class folders: in memory and streaming give the same run, a streamed run killed with
SIGKILL resumes bit-exactly, damaged files are named (or skipped and counted), saved weights load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from folder_helpers import FOLDER_NAMES, tiny_args, write_png_folder
from testkit import fsam, needs_fashion_mnist

from friendly_sam.models import build_model

pytestmark = [needs_fashion_mnist, pytest.mark.slow]  # end-to-end runs in subprocesses
TIMES = ("train_time", "images_per_s", "elapsed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """300 training and 100 test PNGs (30 and 10 per class) of real Fashion-MNIST images."""
    return write_png_folder(tmp_path_factory.mktemp("fashion_png"), {"train": 30, "test": 10})


def _metrics(run):
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMES}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def _weights(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_memory_and_streaming_runs_are_identical(tmp_path, folder):
    runs = {}
    for storage, workers in (("memory", "0"), ("streaming", "2")):
        run = tmp_path / storage
        args = tiny_args(folder, "--data-storage", storage, "--num-workers", workers, "--epochs", "2")
        result = fsam("train", "--out", str(run), *args)
        assert result.returncode == 0, result.stderr
        assert f"{storage}: {storage} requested" in result.stdout
        runs[storage] = run
    memory, streaming = runs["memory"], runs["streaming"]
    assert _metrics(memory) == _metrics(streaming)  # same order, augmentation, losses, accuracies
    assert _same_weights(_weights(memory), _weights(streaming))
    record = json.loads((streaming / "classes.json").read_text())
    assert record["classes"] == sorted(FOLDER_NAMES) and record["counts"] == {"train": 300, "test": 100}
    assert record["storage"] == "streaming" and record["skipped"] == {}
    summary = json.loads((memory / "summary.json").read_text())
    assert summary["dataset"] == "imagefolder" and 0 <= summary["final_test_acc"] <= 100
    assert _metrics(memory)[-1]["train_acc"] > 20  # it learns (chance: 10 %)


def test_val_split_subsets_and_label_noise(tmp_path, folder):
    run = tmp_path / "run"
    args = tiny_args(folder, "--train-subset", "200", "--val-size", "50", "--test-subset", "40")
    result = fsam("train", "--out", str(run), *args, "--label-noise", "0.4", "--data-storage", "streaming")
    assert result.returncode == 0, result.stderr
    (record,) = _metrics(run)
    assert {"val_acc", "test_acc", "noisy_fit"} <= record.keys()
    counts = json.loads((run / "classes.json").read_text())["counts"]
    assert counts == {"train": 150, "val": 50, "test": 40}
    assert len(json.loads((run / "label_noise.json").read_text())["indices"]) == 60


def test_folder_without_test_split_evaluates_val(tmp_path):
    root = write_png_folder(tmp_path / "data", {"train": 8, "val": 4}, classes=3)
    run = tmp_path / "run"
    result = fsam("train", "--out", str(run), *tiny_args(root, "--memory-budget", "1e-6"))  # auto: too big
    assert result.returncode == 0, result.stderr
    assert "streaming: decoded images" in result.stdout and "exceed the memory budget" in result.stdout
    (record,) = _metrics(run)
    assert "val_acc" in record and "test_acc" not in record
    summary = json.loads((run / "summary.json").read_text())
    assert "final_val_acc" in summary and "final_test_acc" not in summary
    table = fsam("compare", str(run), "--metric", "val_acc")
    assert table.returncode == 0, table.stderr


@pytest.mark.parametrize("storage", ["memory", "streaming"])
def test_damaged_file_is_named_or_skipped_and_counted(tmp_path, storage):
    root = write_png_folder(tmp_path / "data", {"train": 8, "test": 2}, classes=3)
    bad = root / "train" / FOLDER_NAMES[1] / "broken.png"
    good = next((root / "train" / FOLDER_NAMES[0]).glob("*.png")).read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # a truncated PNG
    args = tiny_args(root, "--data-storage", storage, "--num-workers", "0")
    result = fsam("train", "--out", str(tmp_path / "stops"), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr and "--skip-bad-images" in result.stderr

    run = tmp_path / "skips"
    result = fsam("train", "--out", str(run), *args, "--skip-bad-images")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 unreadable train image(s)" in result.stdout and str(bad) in result.stdout
    record = json.loads((run / "classes.json").read_text())
    assert record["counts"]["train"] == 24 and len(record["skipped"]["train"]) == 1
    assert str(bad) in record["skipped"]["train"][0]


def test_streaming_kill_and_resume_is_bit_exact(tmp_path, folder):
    args = tiny_args(folder, "--data-storage", "streaming", "--num-workers", "2", "--epochs", "4")
    args += ["--method", "fsam", "--train-subset", "240"]
    full = tmp_path / "full"
    assert fsam("train", "--out", str(full), *args).returncode == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "friendly_sam.cli", "train", "--out", str(killed), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not (killed / "checkpoint.pt").exists():  # the first checkpoint, then kill the whole group
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_metrics(killed)) < 4, "the run finished before it was killed; nothing was resumed"
    result = fsam("train", "--resume", str(killed))
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert _same_weights(_weights(full), _weights(killed))
    assert _metrics(full) == _metrics(killed)


def test_pretrained_weights_and_new_head(tmp_path, folder):
    weights = tmp_path / "cnn_small_10.pt"
    torch.save(build_model("cnn_small", 10, 1).state_dict(), weights)
    three = write_png_folder(tmp_path / "three", {"train": 8, "test": 2}, classes=3)
    args = tiny_args(three, "--pretrained", str(weights))
    refused = fsam("train", "--out", str(tmp_path / "refused"), *args)
    assert refused.returncode == 2 and "--new-head" in refused.stderr and "Traceback" not in refused.stderr
    run = tmp_path / "finetune"
    result = fsam("train", "--out", str(run), *args, "--new-head", "--lr", "1e-9", "--momentum", "0")
    assert result.returncode == 0, result.stderr
    assert "new head: fc.weight, fc.bias" in result.stdout
    before, after = torch.load(weights, weights_only=True), _weights(run)
    body = [k for k in before if not k.startswith("fc.") and "running" not in k and "num_batches" not in k]
    assert body and all(torch.allclose(before[k], after[k], atol=1e-6) for k in body)  # loaded, barely moved
    assert after["fc.weight"].shape == (3, before["fc.weight"].shape[1])
    same = fsam("train", "--out", str(tmp_path / "same"), *tiny_args(folder, "--pretrained", str(weights)))
    assert same.returncode == 0 and "loaded" in same.stdout, same.stderr


@pytest.mark.parametrize("model", ["torchvision:resnet18", "timm:resnet18"])
def test_external_models_build_or_fail_clearly(tmp_path, folder, model):
    result = fsam("train", "--out", str(tmp_path / "run"), *tiny_args(folder, "--model", model))
    if result.returncode == 0:  # the package is installed and works here
        return
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install" in result.stderr and not (tmp_path / "run").exists()


def test_image_folder_option_mistakes(tmp_path, folder):
    no_dir = fsam("train", "--dataset", "imagefolder", "--out", str(tmp_path / "a"))
    assert no_dir.returncode == 2 and "--data-dir" in no_dir.stderr
    missing = fsam("train", "--out", str(tmp_path / "b"), *tiny_args(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and not (tmp_path / "b").exists()
    head = fsam("train", "--out", str(tmp_path / "c"), *tiny_args(folder, "--new-head"))
    assert head.returncode == 2 and "--pretrained" in head.stderr
    crop = fsam("train", "--out", str(tmp_path / "d"), *tiny_args(folder, "--resize-size", "20"))
    assert crop.returncode == 2 and "--resize-size" in crop.stderr


def test_analyze_and_diagnostics_on_a_streamed_folder(tmp_path, folder):
    """The fixed training subset of `fsam analyze` and --decomposition: the same images and values on both
    paths (a streamed folder decodes just that subset)."""
    found = {}
    for storage in ("memory", "streaming"):
        run = tmp_path / storage
        args = tiny_args(folder, "--data-storage", storage, "--method", "fsam", "--decomposition")
        result = fsam("train", "--out", str(run), *args, "--decomposition-subset", "64")
        assert result.returncode == 0, result.stderr
        result = fsam(
            "analyze", str(run), "--parts", "sharpness", "--subset", "64", "--sharpness-steps", "2", "--quiet"
        )
        assert result.returncode == 0, result.stderr
        sharpness = json.loads((run / "analysis.json").read_text())["results"]["sharpness"]
        found[storage] = (_metrics(run), {k: v for k, v in sharpness.items() if k not in ("time_s", "cpu_s")})
    assert "diag_cos_g_m" in found["memory"][0][0]  # the diagnostics are recorded
    assert found["memory"] == found["streaming"]
