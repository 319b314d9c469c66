"""Smoke test of benchmarks/data_pipeline.py on a tiny budget: output table and JSON (never timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit import needs_fashion_mnist, run_python

REPO = Path(__file__).resolve().parents[2]
MODULE = "benchmarks.data_pipeline"


@pytest.mark.slow
@needs_fashion_mnist
def test_data_pipeline_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out_json = tmp_path / "pipeline.json"
    args = [
        "--model",
        "cnn_small",
        "--images",
        "256",
        "--batch-size",
        "64",
        "--repeats",
        "2",
        "--threads",
        "1",
    ]
    proc = run_python("-m", MODULE, *args, "--json", str(out_json), timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| loop | median img/s | runs | ratio to bare |" in proc.stdout
    res = json.loads(out_json.read_text())
    assert set(res["results"]) == {"bare", "pipeline (quiet)", "pipeline (progress bar)"}
    for name, values in res["results"].items():
        assert len(values) == 2 and all(v > 0 for v in values), name
        assert f"| {name} |" in proc.stdout
    assert "| bare |" in proc.stdout and "| 1.000 |" in proc.stdout  # the baseline's own ratio
    assert res["machine"] and res["commit"] is not None
