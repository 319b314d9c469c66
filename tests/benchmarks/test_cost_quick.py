"""Smoke test of benchmarks/cost/run.py on a tiny model: output files and table format (never timings)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = "benchmarks.cost.run"
HAS_PTO = importlib.util.find_spec("pytorch_optimizer") is not None


@pytest.mark.slow
def test_cost_quick(tmp_path: Path) -> None:
    contenders = "fsam,pto-fsam" if HAS_PTO else "fsam"
    proc = subprocess.run(
        [sys.executable, "-m", MODULE, "--quick", "--out-dir", str(tmp_path), "--contenders", contenders],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "cost_quick.md").read_text()
    res = json.loads((tmp_path / "cost_quick.json").read_text())
    assert md.strip() in proc.stdout

    assert res["command"].startswith("python -m benchmarks.cost.run --quick")
    assert f"Command: `{res['command']}`" in md
    for key in ("cpu", "torch", "commit"):
        assert res["machine"][key] not in (None, "", "unknown")
    assert res["machine"]["torch"] in md

    (w,) = res["workloads"]
    names = ["sgd", "fsam"] + (["pto-fsam"] if HAS_PTO else [])
    assert [r["name"] for r in w["rows"]] == names
    for r in w["rows"]:
        assert len(r["times_ms"]) == 3 and r["median_ms"] > 0 and r["ratio_to_sgd"] > 0
    assert w["rows"][0]["ratio_to_sgd"] == 1.0
    # exact tensor accounting: SGD holds its momentum; our F-SAM also the saved weights and the EMA
    tm, p = w["tensor_memory"], w["param_mib"]
    assert abs(tm["sgd"]["held_mib"] - p) < 1e-6
    assert abs(tm["fsam"]["held_mib"] - 3 * p) < 1e-6
    if HAS_PTO:
        assert abs(tm["pto-fsam"]["held_mib"] - 2 * p) < 1e-6  # momentum + EMA; weight copy per step only
    assert set(w["memory"]) == set(names)
    for v in w["memory"].values():
        assert v["baseline_mib"] > 0 and v["peak_mib"] >= v["baseline_mib"]

    header = next(line for line in md.splitlines() if line.startswith("| optimizer | median ms/step"))
    assert header.count("|") == 11
    lines = md.splitlines()
    table = lines[lines.index(header) + 2 : lines.index(header) + 2 + len(names)]
    assert [row.split(" | ")[0] for row in table] == ["| SGD", "| F-SAM (ours)"] + (
        ["| FriendlySAM (pytorch-optimizer)"] if HAS_PTO else []
    )
    assert all(row.count("|") == 11 for row in table)
    assert "FriendlySAM (pytorch-optimizer) / F-SAM (ours) (paired) = " in md or not HAS_PTO
