"""How errors end a torchrun run (2 processes, gloo): a rank that stops responding ends the others after
--dist-timeout with one line; a damaged image in one rank's shard ends every rank with one line each."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from test_imagefolder_torchrun import _png_folder
from test_train_torchrun import ARGS, descendants, kill_hard, launch
from testkit import FASHION_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="no Fashion-MNIST"),
]


def _ours(out: str) -> tuple[list[str], int]:
    """The ranks' error lines, and the tracebacks printed by the ranks (torchrun's own is not ours)."""
    errors = [line for line in out.splitlines() if "fsam train: error:" in line]
    rank_tracebacks = sum(1 for line in out.splitlines() if line.startswith("[rank") and "Traceback" in line)
    return errors, rank_tracebacks


def test_a_stopped_rank_ends_the_others_after_the_timeout(tmp_path):
    args = [*ARGS]
    args[args.index("--epochs") + 1] = "50"
    proc = launch("--out", str(tmp_path / "run"), *args, "--dist-timeout", "5")
    deadline = time.time() + 180
    while not (tmp_path / "run" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    workers = descendants(proc.pid)
    assert len(workers) >= 2, workers
    os.kill(workers[-1], signal.SIGSTOP)  # a rank that stops responding (not dead: no connection closes)
    t0 = time.time()
    try:
        out = proc.communicate(timeout=150)[0]
    except subprocess.TimeoutExpired:
        kill_hard(proc)
        pytest.fail("the other rank waited for ever")
    errors, tracebacks = _ours(out)
    assert proc.returncode != 0 and time.time() - t0 < 120
    assert tracebacks == 0 and len(errors) == 1, out[-3000:]
    assert "stopped responding within --dist-timeout" in errors[0] and str(tmp_path / "run") in errors[0]


def test_a_damaged_image_in_one_shard_is_one_line_per_rank(tmp_path):
    data = _png_folder(tmp_path / "data", {"train": 8})
    (data / "train" / "class3" / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    args = ["--dataset", "imagefolder", "--data-dir", str(data), "--image-size", "28", "--model", "cnn_small",
            "--batch-size", "27", "--epochs", "1", "--threads", "1", "--quiet", "--data-storage", "streaming",
            "--num-workers", "0", "--dist-timeout", "60"]  # fmt: skip
    proc = launch("--out", str(tmp_path / "run"), *args)
    try:
        out = proc.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
        kill_hard(proc)
        raise
    errors, tracebacks = _ours(out)
    assert proc.returncode != 0 and tracebacks == 0, out[-3000:]
    assert 1 <= len(errors) <= 2 and any("damaged.png" in e for e in errors), out[-3000:]
