"""Smoke test of benchmarks/efficient/ (run.py, timing.py, the report) on a tiny budget: files and shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import FASHION_DIR, needs_fashion_mnist

REPO = Path(__file__).resolve().parents[2]
RUN = "benchmarks.efficient.run"
TIMING = "benchmarks.efficient.timing"
pytestmark = [needs_fashion_mnist, pytest.mark.slow]

TINY = ["--quick", "--model", "cnn_small", "--train-subset", "320", "--val-size", "128", "--epochs", "1"]
TINY += ["--test-subset", "100", "--seeds", "0", "--cells", "sym40-long", "--variants", "fsam-p4,fsam-sb25"]
TINY += ["--noisy-rhos", "0.2", "--data-dir", str(FASHION_DIR)]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_runs_timing_and_report(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    _run(
        TIMING,
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--batch",
        "8",
        "--model",
        "cnn_small",
        "--out-dir",
        str(out),
    )
    timing = json.loads((out / "efficient_timing.json").read_text())["methods"]
    assert {"sgd", "sam", "fsam", "fsam-p4", "fsam-ls4", "fsam-sb25"} <= set(timing)
    assert timing["sgd"]["time_ratio_to_sgd"] == 1.0 and timing["fsam"]["time_ratio_to_sgd"] > 0
    common = ["--work-dir", str(work), "--out-dir", str(out), "--timing", str(out / "efficient_timing.json")]
    common += [
        "--baseline-dir",
        str(tmp_path / "no-baselines"),
        "--clean-baseline",
        str(tmp_path / "none.json"),
    ]
    _run(RUN, *TINY, *common, "--no-report")
    assert (work / "runs" / "sym40-long" / "fsam-p4_rho0.2_lmbda0.6" / "seed0" / "summary.json").is_file()
    again = _run(RUN, *TINY, *common, "--dry-run")  # resumable: everything is done now
    assert again.stdout.count("done") == 2
    _run(RUN, *TINY, *common, "--report-only")
    noisy = json.loads((out / "efficient_fsam.json").read_text())
    assert set(noisy) >= {"setting", "methods", "target"}
    methods = noisy["methods"]
    assert list(methods)[:3] == ["sgd", "sam", "fsam"] and not methods["sgd"]["complete"]  # no baselines here
    entry = methods["fsam-p4"]
    assert entry["complete"] and len(entry["test_acc"]) == 1 and entry["config"] == "fsam-p4_rho0.2_lmbda0.6"
    assert entry["time_ratio_to_sgd"] == timing["fsam-p4"]["time_ratio_to_sgd"]
    assert entry["options"] == {"perturb_every": 4, "between": "base", "ascent_fraction": 1.0}
    clean = json.loads((out / "efficient_fsam_clean.json").read_text())
    assert set(clean["methods"]) >= {"sgd", "sam", "fsam"}
    md = (out / "efficient_fsam.md").read_text()
    assert "INCOMPLETE" in md and "| F-SAM, perturb every 4th step |" in md
