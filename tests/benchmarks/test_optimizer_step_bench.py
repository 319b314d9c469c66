"""Smoke test of benchmarks/optimizer_step.py: output format and buffer counts (never timings)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = "benchmarks.optimizer_step"
HAS_PTO = importlib.util.find_spec("pytorch_optimizer") is not None

# Runs the script in a fresh interpreter; with block_pto, `import pytorch_optimizer` fails there.
RUNNER = """
import runpy, sys
if {block!r}:
    sys.modules["pytorch_optimizer"] = None  # makes the import raise ImportError
sys.argv = [{module!r}] + {args!r}
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit as e:
    if e.code:
        raise
"""


def run_bench(tmp_path: Path, block_pto: bool) -> tuple[str, dict]:
    js, md = tmp_path / "out.json", tmp_path / "out.md"
    args = ["--quick", "--params", "small", "--json", str(js), "--markdown", str(md)]
    code = RUNNER.format(block=block_pto, module=MODULE, args=args)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert md.read_text() == proc.stdout
    return proc.stdout, json.loads(js.read_text())


def check_common(out: str, res: dict) -> dict[str, dict]:
    assert "| contender | median ms | IQR ms |" in out
    assert "ratio to SGD" in out and "extra" in out
    m = res["machine"]
    for key in ("cpu", "torch_threads", "torch", "commit"):
        assert m[key] not in (None, "")
    assert m["torch"] in out and m["cpu"] in out
    assert res["config"]["params"] == "small" and res["config"]["repeats"] == 3
    rows = {r["name"]: r for r in res["results"]}
    for name in (
        "SGD (foreach=False)",
        "SGD (foreach=True)",
        "ours FriendlySAM (foreach=False)",
        "ours FriendlySAM (foreach=True)",
        "ours SAM (foreach=False)",
        "ours SAM (foreach=True)",
    ):
        r = rows[name]
        assert f"| {name} |" in out
        assert len(r["times_ms"]) == 3
        assert r["median_ms"] > 0 and r["iqr_ms"] >= 0 and r["ratio_to_sgd"] > 0
    assert res["baseline"] in ("SGD (foreach=False)", "SGD (foreach=True)")
    assert min(rows[n]["ratio_to_sgd"] for n in ("SGD (foreach=False)", "SGD (foreach=True)")) == 1.0
    # Exact state accounting: SGD keeps its momentum; F-SAM adds EMA + saved weights; SAM the saved weights.
    for fe in (False, True):
        assert rows[f"SGD (foreach={fe})"]["held_buffers"] == 1.0
        assert rows[f"ours FriendlySAM (foreach={fe})"]["held_buffers"] == 3.0
        assert rows[f"ours FriendlySAM (foreach={fe})"]["extra_buffers"] == 2.0
        assert rows[f"ours SAM (foreach={fe})"]["extra_buffers"] == 1.0
    return rows


@pytest.mark.slow
def test_bench_without_pytorch_optimizer(tmp_path: Path) -> None:
    out, res = run_bench(tmp_path, block_pto=True)
    rows = check_common(out, res)
    assert not any(name.startswith("pytorch_optimizer") for name in rows)
    assert "pytorch-optimizer is not installed" in out
    assert res["equivalence"] is None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PTO, reason="pytorch-optimizer (the [bench] extra) is not installed")
def test_bench_with_pytorch_optimizer(tmp_path: Path) -> None:
    out, res = run_bench(tmp_path, block_pto=False)
    rows = check_common(out, res)
    for fe in (False, True):
        r = rows[f"pytorch_optimizer FriendlySAM (foreach={fe})"]
        assert r["median_ms"] > 0
        assert r["held_buffers"] == 2.0  # its EMA + SGD momentum; saved weights are re-cloned every step
    # The two implementations compute the same F-SAM step.
    assert all(v < 1e-8 for v in res["equivalence"].values())
