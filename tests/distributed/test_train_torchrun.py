"""``fsam train`` under torchrun with 2 processes (gloo, CPU) on real Fashion-MNIST: a run killed with
SIGKILL after its first checkpoint resumes to exactly the weights of an uninterrupted run, and its
checkpoint also resumes in a single process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from testkit import needs_fashion_mnist

from friendly_sam.train import run_dir as rd

pytestmark = [pytest.mark.slow, needs_fashion_mnist]
# 300 images in batches of 64: 4 full global batches and one of 44 (22 per rank), per epoch.
ARGS = [
    "--method", "fsam", "--model", "cnn_small", "--train-subset", "300", "--batch-size", "64",
    "--epochs", "3", "--test-subset", "200", "--rho", "0.1", "--lmbda", "0.6", "--threads", "1", "--quiet",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(*args: str, nproc: int = 2) -> subprocess.Popen[str]:
    """``torchrun --standalone`` (a free port of its own) in a new session, so the whole group can be
    killed; ``nproc=0``: a plain single process, no torchrun."""
    cmd = [sys.executable, "-m", "friendly_sam.cli", "train", *args]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "friendly_sam.cli", "train", *args]  # fmt: skip
    return subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_hard(proc: subprocess.Popen[str]) -> None:
    """SIGKILL torchrun's process group AND its workers: torchrun starts each worker in a session of its
    own, so killing torchrun alone leaves them running (they would finish the run)."""
    workers = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        kill_hard(proc)
        raise
    assert proc.returncode == 0, out
    return out


def checkpoint(run: Path) -> dict:
    return rd.read_checkpoint(run)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_kill_resume_and_world_size_change(tmp_path):
    full, killed, single = tmp_path / "full", tmp_path / "killed", tmp_path / "single"
    run_full = launch("--out", str(full), *ARGS)
    run_killed = launch("--out", str(killed), *ARGS)
    deadline = time.time() + 240
    while not (killed / "checkpoint.pt").exists():  # the first checkpoint (epoch 1), then kill hard
        assert run_killed.poll() is None, run_killed.communicate()[0]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    kill_hard(run_killed)
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"
    shutil.copytree(killed, single)
    out_full = finish(run_full)
    assert out_full.count("done:") == 1  # rank 0 alone reports

    resumed = launch("--resume", str(killed))
    resumed_single = launch("--resume", str(single), nproc=0)
    out = finish(resumed)
    assert "resuming" in out
    out_single = finish(resumed_single)
    assert "resuming" in out_single

    # 2 processes, killed and resumed == uninterrupted: weights, optimizer state, every rank's EMA
    a, b = checkpoint(full), checkpoint(killed)
    assert a["world_size"] == b["world_size"] == 2
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert len(a["replica_states"]) == 2
    for ra, rb in zip(a["replica_states"], b["replica_states"]):
        assert all(torch.equal(ra[i]["ema"], rb[i]["ema"]) for i in ra)
    ema0, ema1 = (torch.cat([s[i]["ema"].reshape(-1) for i in sorted(s)]) for s in a["replica_states"])
    assert not torch.equal(ema0, ema1)  # per-replica (default): the replicas' EMAs differ
    ma, mb = metrics(full), metrics(killed)
    assert [m["epoch"] for m in mb] == [1, 2, 3]
    keys = ("train_loss", "train_acc", "lr", "test_loss", "test_acc")
    assert [[m[k] for k in keys] for m in ma] == [[m[k] for k in keys] for m in mb]

    # the same checkpoint continues in one process (rank 0's EMA); it trains on the same global batches
    c = checkpoint(single)
    assert c["world_size"] == 1 and c["replica_states"] == [] and c["epoch"] == 3
    assert json.loads((single / "summary.json").read_text())["world_size"] == 1
    ms = metrics(single)
    assert [m["epoch"] for m in ms] == [1, 2, 3] and ms[0] == mb[0]
    assert all(torch.isfinite(v).all() for v in c["model"].values() if v.is_floating_point())
