"""The fault-injection suite (benchmarks/fault_suite.py): every bad input ends in a clear error or is survived.

One subprocess runs the whole suite (the in-process cases through ``cli.main``, then real processes for
kills, concurrent writers, a full disk and a directory deleted mid-run); about two minutes on one thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safety_helpers import run_python

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "fault_suite.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="no Fashion-MNIST")
def test_every_fault_is_a_clear_error_or_survived(tmp_path):
    out = tmp_path / "fault_suite.json"
    result = run_python(str(SUITE), "--json", str(out), "--work", str(tmp_path / "work"), timeout=900)
    assert out.exists(), result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["cases"] >= 150 and report["clear_errors"] >= 100 and report["survived"] >= 8
    assert report["unhandled"] == [], json.dumps(report["unhandled"], indent=1)
    assert result.returncode == 0, result.stdout[-2000:]
    # spot checks of the messages a user reads
    messages = {o["case"]: o["message"] for o in report["outcomes"]}
    assert "holds Python objects" in messages["resume: planted pickle"]
    assert "does not match its checksum" in messages["resume: one flipped bit"]
    assert "diverged" in messages["train --lr 1e12 (loss explodes)"]
    assert "cannot be a run name" in messages["train --name ../../../../x"]
