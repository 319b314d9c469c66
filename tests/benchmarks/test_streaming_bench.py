"""Smoke test of benchmarks/streaming.py on a tiny budget: report files and their content (never timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit import needs_fashion_mnist, run_python

REPO = Path(__file__).resolve().parents[2]
MODULE = "benchmarks.streaming"


@pytest.mark.slow
@needs_fashion_mnist
def test_streaming_benchmark_runs_and_reports(tmp_path: Path) -> None:
    args = ["--images", "48", "--batch-size", "16", "--epochs", "2", "--repeats", "2", "--model", "cnn_small"]
    proc = run_python("-m", MODULE, *args, "--out-dir", str(tmp_path), timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "streaming.json").read_text())
    assert res["identical_losses"] is True  # the two paths train identically
    for storage in ("memory", "streaming"):
        for phase in ("first", "steady"):
            assert len(res["rates"][storage][phase]) == 2 and all(v > 0 for v in res["rates"][storage][phase])
    assert len(res["ratios"]["steady"]) == 2
    assert res["machine"]["load_average"] and res["machine"]["load_average_before"]
    md = (tmp_path / "streaming.md").read_text()
    assert "| later epochs |" in md and "streaming / memory" in md and "Target" in md
