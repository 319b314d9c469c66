"""`fsam train`, `compare` and `models` end to end on real Fashion-MNIST: a kill and resume through real
processes, the rest in-process (the ``cli`` fixture: the same ``main`` without a torch import per call)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from testkit import TINY, fsam, needs_fashion_mnist, popen_fsam

from friendly_sam.train.checkpoint import load_checkpoint
from friendly_sam.train.run_dir import LOCK_FILE

pytestmark = needs_fashion_mnist


@pytest.mark.parametrize("method", ["base", "sam", "asam", "fsam", "afsam"])
def test_train_each_method(cli, tmp_path, method):
    run = tmp_path / method
    result = cli("train", "--method", method, "--out", str(run), *TINY)
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == method
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "train_time", "images_per_s"):
        assert key in record
    assert 0 <= record["test_acc"] <= 100 and record["lr"] == 0.0  # cosine schedule ends at 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_test_acc"] == record["test_acc"]
    ckpt = load_checkpoint(run / "checkpoint.pt")
    if method != "base":
        assert "base_optimizer" in ckpt["optimizer"]  # the two-pass state dict carries the base state


def test_config_file_with_flag_override_and_label_noise(cli, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        '[data]\ndataset = "fashion-mnist"\nlabel_noise = 0.25\nnoise_kind = "symmetric"\nval_size = 64\n'
        '[optimizer]\nmethod = "sam"\nrho = 0.2\n'
    )
    run = tmp_path / "run"
    result = cli("train", "--config", str(config), "--rho", "0.07", "--out", str(run), *TINY)
    assert result.returncode == 0, result.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["rho"] == 0.07 and saved["method"] == "sam" and saved["label_noise"] == 0.25
    noise = json.loads((run / "label_noise.json").read_text())
    assert len(noise["indices"]) == round(0.25 * (128 - 64))
    record = json.loads((run / "metrics.jsonl").read_text())
    assert "val_acc" in record


def test_existing_run_directory_is_never_overwritten(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--out", str(run), *TINY).returncode == 0
    before = _files(run)
    result = cli("train", "--out", str(run), *TINY)
    assert result.returncode == 2 and "already holds a run" in result.stderr and "--resume" in result.stderr
    assert before == _files(run)


def _files(run):
    """Every file of the run but the lock file (which names its last holder)."""
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK_FILE}


def _final_weights(run):
    return load_checkpoint(run / "checkpoint.pt")["model"]


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    args = [
        "--method",
        "fsam",
        "--model",
        "cnn_small",
        "--train-subset",
        "640",
        "--batch-size",
        "64",
        "--epochs",
        "4",
        "--test-subset",
        "500",
        "--threads",
        "1",
        "--quiet",
    ]
    full = tmp_path / "full"
    assert fsam("train", "--out", str(full), *args).returncode == 0

    killed = tmp_path / "killed"
    proc = popen_fsam("train", "--out", str(killed), *args)
    deadline = time.time() + 240
    while not (killed / "checkpoint.pt").exists():  # wait for the first checkpoint, then kill hard
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epochs_done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert epochs_done < 4, "the run finished before it was killed; the test did not test resuming"
    result = fsam("train", "--resume", str(killed))
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    a, b = _final_weights(full), _final_weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]


def test_corrupt_and_incompatible_checkpoints_are_refused_intact(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--out", str(run), *TINY, "--epochs", "2").returncode == 0
    ckpt = run / "checkpoint.pt"
    # Pretend the run stopped after epoch 1 with a damaged checkpoint.
    (run / "summary.json").unlink()
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    before = _files(run)
    result = cli("train", "--resume", str(run))
    assert result.returncode == 2 and "corrupt" in result.stderr
    assert before == _files(run)

    ckpt.write_bytes(data)
    config = json.loads((run / "config.json").read_text())
    config["seed"] = 7
    (run / "config.json").write_text(json.dumps(config))
    result = cli("train", "--resume", str(run))
    assert result.returncode == 2 and "different run setting" in result.stderr and "seed" in result.stderr


def test_compare_prints_table_and_writes_plot(cli, tmp_path):
    runs = []
    for method, seed in [("base", 0), ("base", 1), ("fsam", 0)]:  # --method base on SGD: labelled sgd
        run = tmp_path / f"{method}{seed}"
        assert (
            cli("train", "--method", method, "--seed", str(seed), "--out", str(run), *TINY).returncode == 0
        )
        runs.append(str(run))
    plot = tmp_path / "plot.png"
    result = cli("compare", *runs, "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| run | n | final test_acc (mean ± std)")
    sgd_row = next(line for line in lines if line.startswith("| sgd |"))
    assert sgd_row.split("|")[2].strip() == "2"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = cli("compare", str(tmp_path / "nothing"))
    assert bad.returncode == 2 and "not a run directory" in bad.stderr


def test_models_lists_parameter_counts(cli):
    result = cli("models")
    assert result.returncode == 0
    assert "resnet18" in result.stdout and "11,173,962" in result.stdout


def test_tensorboard_logs_every_metric(cli, tmp_path):
    pytest.importorskip("tensorboard", reason="the [test] extra installs tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    result = cli("train", "--method", "fsam", "--tensorboard", "--out", str(run), *TINY, "--epochs", "2")
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "lr"} <= tags
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = events.Scalars("test_acc")
    assert [e.step for e in logged] == [1, 2]
    assert [e.value for e in logged] == pytest.approx([m["test_acc"] for m in metrics])


def test_tensorboard_missing_fails_before_the_run_directory_exists(tmp_path):
    # A user without the package: the import fails; nothing is written, so the same command works later.
    run = tmp_path / "run"
    code = (
        "import sys; sys.modules['torch.utils.tensorboard'] = None\n"
        "from friendly_sam.cli import main\n"
        f"sys.exit(main(['train', '--tensorboard', '--out', {str(run)!r}, *{TINY!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--tensorboard needs the tensorboard package: pip install tensorboard" in result.stderr
    assert not run.exists()
