"""End-to-end smoke test of benchmarks/generalization/run.py on a tiny budget: files and table format only."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = "benchmarks.generalization.run"
HAS_PTO = importlib.util.find_spec("pytorch_optimizer") is not None


def _have_fashion_mnist() -> bool:
    try:
        from friendly_sam.data import load_dataset

        load_dataset("fashion-mnist")
        return True
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _have_fashion_mnist(), reason="Fashion-MNIST not available locally")

TINY = [
    "--quick",
    "--model",
    "cnn_small",
    "--train-subset",
    "512",
    "--val-size",
    "128",
    "--epochs",
    "1",
    "--test-subset",
    "500",
    "--seeds",
    "0",
    "--sam-rhos",
    "0.05",
    "--fsam-rhos",
    "0.05",
    "--lmbdas",
    "0.6",
]


def run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [*TINY, "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out"), *extra]
    return subprocess.run(
        [sys.executable, "-m", MODULE, *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )


@pytest.mark.slow
def test_quick_suite_end_to_end(tmp_path: Path) -> None:
    pto = "sym40" if HAS_PTO else ""
    # --no-report: only the final report (the per-run reports are exercised by the next test)
    proc = run(tmp_path, "--workers", "2", "--no-report", "--settings", "sym40", "--pto-settings", pto)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    md = (out / "generalization_quick.md").read_text()
    res = json.loads((out / "generalization_quick.json").read_text())
    assert (out / "generalization_quick.png").stat().st_size > 1000

    # every planned run finished and is a trainer run directory
    n_runs = 3 + (2 if HAS_PTO else 0)
    assert res["finished"] == res["total"] == n_runs and res["complete"]
    for setting in ("sym40",):
        for name in ("sgd", "sam_rho0.05", "fsam_rho0.05_lmbda0.6"):
            d = tmp_path / "work" / "runs" / setting / name / "seed0"
            for f in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"):
                assert (d / f).is_file(), d / f
        s = res["settings"][setting]
        assert s["selected"] == {"sgd": "sgd", "sam": "sam_rho0.05", "fsam": "fsam_rho0.05_lmbda0.6"}
        for method in ("sgd", "sam", "fsam"):
            r = s["methods"][method]
            assert r["seeds"] == [0] and len(r["test_acc"]) == 1 and 0 <= r["test_acc"][0] <= 100
        assert s["fsam_minus_sam"]["seeds"] == [0]
        assert s["sweep"]["sam_rho0.05"]["n"] == 1
    if HAS_PTO:
        assert set(res["settings"]["sym40"]["pytorch_optimizer"]) == {"pto-sam", "pto-fsam"}

    # report: status, provenance, the main table with one row per setting
    assert "Status: complete." in md
    assert "Command: `python -m benchmarks.generalization.run --quick" in md
    for key in ("commit", "torch", "cpu"):
        assert res["meta"]["machine"][key] not in (None, "", "unknown")
    assert res["meta"]["machine"]["torch"] in md and res["meta"]["machine"]["cpu"] in md
    header = "| setting | SGD | SAM | F-SAM | F-SAM − SAM | SAM − SGD | selected SAM / F-SAM | n |"
    lines = md.splitlines()
    i = lines.index(header)
    rows = lines[i + 2 : i + 3]
    assert [r.split(" | ")[0] for r in rows] == ["| 40 % symmetric noise"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert len(cells) == 8
        for c in cells[1:4]:
            assert " ± " in c and float(c.split(" ± ")[0]) >= 0
        assert cells[4][0] in "+-" and cells[5][0] in "+-"
        assert cells[7] == "1/1/1"
    assert "![test accuracy per setting](generalization_quick.png)" in md

    # a rerun finds everything done and trains nothing
    again = run(tmp_path, "--settings", "sym40", "--pto-settings", pto)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{n_runs} done, 0 from --prior, 0 to resume, 0 to restart, 0 to start" in again.stdout

    # --prior: this report stands in for a run whose directory is gone; the others are compared with it
    prior = tmp_path / "prior.json"
    shutil.copy(out / "generalization_quick.json", prior)
    shutil.rmtree(tmp_path / "work" / "runs" / "sym40" / "sgd" / "seed0")
    base = ["--settings", "sym40", "--pto-settings", pto, "--prior", str(prior)]
    dry = run(tmp_path, *base, "--dry-run")
    assert "prior    sym40/sgd/seed0" in dry.stdout, dry.stdout + dry.stderr
    rep = run(tmp_path, *base, "--report-only")
    assert rep.returncode == 0, rep.stderr[-3000:]
    res2 = json.loads((out / "generalization_quick.json").read_text())
    assert res2["complete"] and res2["from_prior"] == 1 and res2["run_here"] == n_runs - 1
    assert res2["prior"]["runs_used"] == ["sym40/sgd/seed0"]
    assert res2["prior"]["rerun_max_abs_diff"] == 0.0  # the same runs: identical numbers
    sgd = res2["settings"]["sym40"]["methods"]["sgd"]
    assert (
        sgd["prior_seeds"] == [0]
        and sgd["test_acc"] == res["settings"]["sym40"]["methods"]["sgd"]["test_acc"]
    )
    md2 = (out / "generalization_quick.md").read_text()
    assert f"{n_runs - 1} ran here and 1 come from" in md2 and "(bit-for-bit reproduction)" in md2
    # the report of another suite cannot stand in for this one's runs
    bad = run(tmp_path, *base, "--epochs", "2", "--dry-run")
    assert bad.returncode != 0 and "is a report of another suite (epochs differ)" in bad.stderr


@pytest.mark.slow
def test_partial_report_and_resume(tmp_path: Path) -> None:
    """--max-runs stops early: the report says INCOMPLETE; a broken run dir is restarted."""
    proc = run(tmp_path, "--pto-settings", "", "--settings", "clean", "--max-runs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "out" / "generalization_quick.md").read_text()
    assert "INCOMPLETE: 1 of 3 runs finished" in md
    # a run interrupted before its first checkpoint (config.json only) counts as broken
    broken = tmp_path / "work" / "runs" / "clean" / "sam_rho0.05" / "seed0"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    dry = run(tmp_path, "--pto-settings", "", "--settings", "clean", "--dry-run")
    assert "broken   clean/sam_rho0.05/seed0" in dry.stdout
    assert "done     clean/sgd/seed0" in dry.stdout


def test_long_cell_alone_with_its_own_rho(tmp_path: Path) -> None:
    """--settings '' --long-settings X --long-rho R plans the long cell only, at rho R (a follow-up sweep)."""
    dry = run(
        tmp_path,
        "--settings",
        "",
        "--pto-settings",
        "",
        "--long-settings",
        "sym40",
        "--long-rho",
        "0.4",
        "--dry-run",
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert dry.stdout.split() == [
        "todo",
        "sym40-long/sgd/seed0",
        "todo",
        "sym40-long/sam_rho0.4/seed0",
        "todo",
        "sym40-long/fsam_rho0.4_lmbda0.6/seed0",
    ]
