"""The trainer under faults: a kill during a checkpoint write, divergence, skipped splits, resume options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from testkit import fsam, needs_fashion_mnist, tiny_config

from friendly_sam.train import Callback, train
from friendly_sam.train import run_dir as rd

pytestmark = needs_fashion_mnist


def _cfg(**changes):
    return tiny_config(**{"epochs": 2, "lr": 0.05, "seed": 3, **changes})


class _StopIn(Callback):
    """Interrupts the run at the first step of the 0-based ``epoch`` (as a kill would, but in-process)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def before_step(self, state):
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def _strict(path: Path) -> list:
    reject = lambda c: (_ for _ in ()).throw(ValueError(f"{path} holds {c}"))  # noqa: E731
    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_kill_during_the_checkpoint_write_then_resume_is_bit_exact(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(_cfg(), whole, progress=False, log=lambda m: None)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), cut, progress=False, log=lambda m: None, callbacks=[_StopIn(1)])
    # what a kill in the middle of epoch 2's writes leaves: a half-written temporary checkpoint and a
    # torn metrics line
    (cut / ".checkpoint.pt.k1ll3d.tmp").write_bytes((cut / "checkpoint.pt").read_bytes()[:5000])
    with open(cut / rd.METRICS_FILE, "a") as f:
        f.write('{"epoch": 2, "train_lo')
    result = fsam("train", "--resume", str(cut), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "removed 1 temporary file" in result.stdout
    assert not list(cut.glob(".*.tmp"))
    a, b = rd.read_checkpoint(whole), rd.read_checkpoint(cut)
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [m["epoch"] for m in _strict(cut / rd.METRICS_FILE)] == [1, 2]


class _Explode(Callback):
    """From the 0-based ``epoch`` on, every step runs with a learning rate of 1e12."""

    def __init__(self, epoch):
        self.epoch, self.state = epoch, None

    def on_train_start(self, state):
        self.state = state

    def before_step(self, state):
        if state.epoch >= self.epoch:
            for group in self.state.optimizer.param_groups:
                group["lr"] = 1e12


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError) as info:
        train(
            _cfg(epochs=3, method="base"), run, progress=False, log=lambda m: None, callbacks=[_Explode(1)]
        )
    message = str(info.value)
    assert "diverged in epoch 2/3" in message and "last good checkpoint (epoch 1) is kept" in message
    assert rd.read_checkpoint(run)["epoch"] == 1  # never replaced by a non-finite one
    assert [m["epoch"] for m in _strict(run / rd.METRICS_FILE)] == [1]
    assert not rd.has_summary(run)


class _SkipTestIn(Callback):
    def before_evaluation(self, state):
        if state.record["epoch"] == 1:
            state.splits = [s for s in state.splits if s != "test"]


@pytest.mark.slow
def test_a_skipped_split_is_null_in_strict_json(tmp_path):
    run = tmp_path / "run"
    summary = train(_cfg(), run, progress=False, log=lambda m: None, callbacks=[_SkipTestIn()])
    first, second = _strict(run / rd.METRICS_FILE)
    assert first["test_acc"] is None and first["test_loss"] is None
    assert summary["best_test_acc"] == second["test_acc"]
    json.loads(
        (run / rd.SUMMARY_FILE).read_text(), parse_constant=lambda c: pytest.fail(f"summary holds {c}")
    )
    result = fsam("compare", str(run), str(run))
    assert result.returncode == 0 and "counted once" in result.stdout


@pytest.mark.slow
def test_resume_applies_safe_options_and_records_them(tmp_path):
    run = tmp_path / "run"
    train(_cfg(epochs=1), run, progress=False, log=lambda m: None)
    refused = fsam("train", "--resume", str(run), "--epochs", "2", "--rho", "0.2")
    assert refused.returncode == 2 and "--rho 0.2 (the run has 0.05)" in refused.stderr
    result = fsam("train", "--resume", str(run), "--epochs", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "epochs changed from 1 to 2 after 1 done" in result.stdout
    assert json.loads((run / rd.CONFIG_FILE).read_text())["epochs"] == 2
    (entry,) = _strict(run / rd.RESUMES_FILE)
    assert entry["after_epoch"] == 1 and entry["changes"] == {"epochs": {"checkpoint": 1, "now": 2}}
