"""The JAX step benchmark's smoke run: every contender timed, ratios to SGD and optax.contrib.sam, and its
checks of what the contenders compute."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("optax", reason="JAX side not installed: pip install 'friendly-sam[jax]'")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "jax_step.py"


@pytest.mark.slow
def test_quick_run_reports_every_contender_and_its_checks(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("jax_step", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    report = bench.main(["--quick", "--markdown", str(md), "--json", str(js)])
    rows = {r["contender"]: r for r in report["rows"]}
    assert set(rows) == {
        "sgd",
        "optax.contrib.sam",
        "friendly_sam.jax.sam",
        "friendly_sam.jax.fsam",
        "fsam hand-written",
    }
    assert rows["sgd"]["vs_sgd"] == 1.0 and rows["optax.contrib.sam"]["vs_optax_sam"] == 1.0
    assert all(r["median_ms"] > 0 for r in rows.values())
    # F-SAM holds one parameter-sized EMA more than SAM
    assert (
        rows["friendly_sam.jax.fsam"]["held_state_bytes"]
        > 1.9 * rows["friendly_sam.jax.sam"]["held_state_bytes"]
    )
    checks = list(report["checks"].values())
    assert checks[0] == 0.0 and checks[1] < 1e-6 and checks[2] < 1e-6
    assert "| friendly_sam.jax.fsam |" in md.read_text() and js.exists()
