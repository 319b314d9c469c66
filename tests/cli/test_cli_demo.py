"""`fsam demo`: the noisy-label comparison a new user runs first, through a subprocess and in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit import fsam, needs_fashion_mnist

from friendly_sam.commands.demo import DEMO_OPTIMIZERS, SETTINGS, demo_configs, run_demo
from friendly_sam.commands.demo_report import demo_sentence, demo_table
from friendly_sam.train import RunDirectoryError

REPO = Path(__file__).resolve().parents[2]
# Small enough for a test: the real data, the demo's code path, a fraction of its size.
SMALL = {"epochs": 2, "train_subset": 500, "val_size": 100, "test_subset": 300}


def test_rhos_are_the_suites_validation_choices():
    """The demo's rho per method is the one the generalization suite selected on clean validation data."""
    reports = {"noisy": ("demo_suite.json", "sym40-long"), "clean": ("generalization.json", "clean")}
    for setting, (file, cell) in reports.items():
        selected = json.loads((REPO / "docs" / "results" / file).read_text())["settings"][cell]["selected"]
        rho = SETTINGS[setting]["rho"]
        assert selected["sam"] == f"sam_rho{rho['sam']:g}", (setting, selected)
        assert selected["fsam"] == f"fsam_rho{rho['fsam']:g}_lmbda0.6", (setting, selected)


def test_configs_differ_only_in_the_optimizer():
    configs = demo_configs("noisy")
    dicts = {n: c.to_dict() for n, c in configs.items()}
    varying = {k for k in dicts["sgd"] if len({repr(d[k]) for d in dicts.values()}) > 1}
    assert varying <= {"method", "name", "rho"}
    assert configs["sgd"].label_noise == 0.4 and configs["sgd"].val_size > 0
    with pytest.raises(ValueError, match="unknown demo setting"):
        demo_configs("cifar")


@needs_fashion_mnist
@pytest.mark.slow
def test_demo_summary_reuse_and_refusal(tmp_path):
    logs: list[str] = []
    summary = run_demo(tmp_path, "noisy", SMALL, workers=1, progress=False, log=logs.append)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["setting"]["label_noise"] == 0.4 and written["setting"]["train_images"] == 400
    assert set(written["runs"]) == set(DEMO_OPTIMIZERS)
    for name, run in written["runs"].items():
        for key in ("test_acc", "best_test_acc", "noisy_fit", "train_seconds", "rho", "time_ratio_to_sgd"):
            assert key in run, (name, key)
        assert 0 <= run["test_acc"] <= run["best_test_acc"] <= 100 and 0 <= run["noisy_fit"] <= 100
    assert written["runs"]["sgd"]["rho"] is None and written["runs"]["fsam"]["rho"] == 0.4
    assert written["runs"]["sgd"]["time_ratio_to_sgd"] == 1.0
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    table, sentence = demo_table(summary), demo_sentence(summary)
    assert "±" not in table and "n=1" not in table and "SGD" in sentence and "F-SAM" in sentence

    # The same settings again: nothing is retrained, the numbers are the same.
    before = (tmp_path / "fsam" / "metrics.jsonl").read_text()
    again = run_demo(tmp_path, "noisy", SMALL, workers=1, progress=False, log=logs.append)
    assert again["reused_runs"] == list(DEMO_OPTIMIZERS)
    assert (tmp_path / "fsam" / "metrics.jsonl").read_text() == before
    assert again["runs"] == summary["runs"]

    # Other settings in the same directory: refused, nothing touched (never reused silently).
    with pytest.raises(RunDirectoryError, match="other settings.*epochs"):
        run_demo(tmp_path, "noisy", {**SMALL, "epochs": 3}, workers=1, progress=False, log=logs.append)
    with pytest.raises(RunDirectoryError, match="other settings"):
        run_demo(tmp_path, "clean", SMALL, workers=1, progress=False, log=logs.append)
    assert (tmp_path / "fsam" / "metrics.jsonl").read_text() == before


@needs_fashion_mnist
@pytest.mark.slow
def test_demo_command_two_workers(tmp_path):
    """What a user runs (one epoch instead of 30): table, sentence, summary and plot; a rerun with
    other settings is refused with a message naming the fix."""
    out = tmp_path / "demo"
    result = fsam("demo", "--out", str(out), "--epochs", "1", "--workers", "2", "--quiet", timeout=900)
    assert result.returncode == 0, result.stderr
    assert "| F-SAM | 0.4 |" in result.stdout and "wrong labels" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["setting"]["epochs"] == 1 and summary["setting"]["test_images"] == 10000
    assert (out / "demo.png").exists()
    rerun = fsam("demo", "--out", str(out), "--epochs", "2", "--quiet")
    assert rerun.returncode == 2 and "other settings" in rerun.stderr and "Traceback" not in rerun.stderr
