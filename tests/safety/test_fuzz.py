"""The property-based fuzzer (benchmarks/fuzz_files.py) with a bounded number of examples per target:
every reader returns its documented shape or its documented error; the CLI exits 0, or 2 with one line,
never writes outside the run directory and, when it refuses, changes no byte of the run. The longer
run is the benchmark (docs/results/fuzz_files.json)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from testkit import FASHION_DIR as FASHION

pytest.importorskip("hypothesis")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_files.py"
spec = importlib.util.spec_from_file_location("fuzz_files", SCRIPT)
fuzz_files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz_files)

READERS = ["json", "toml", "yaml", "config_file", "metrics", "analysis", "checkpoint", "torch_file"]


@pytest.mark.parametrize("target", READERS)
def test_every_reader_holds_its_contract(tmp_path, target):
    strategy, check = fuzz_files.reader_targets(tmp_path)[target]
    result = fuzz_files.fuzz(target, strategy, check, examples=20, seed=21)
    assert result["failure"] is None, result["failure"]
    assert result["examples"] >= 20 and result["refused"] > 0


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="no Fashion-MNIST")
def test_the_cli_holds_its_invariants(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sandbox = fuzz_files.Sandbox(tmp_path / "sandbox")
    strategy = fuzz_files.cli_examples(sandbox)
    result = fuzz_files.fuzz("cli", strategy, lambda ex: fuzz_files.run_cli_example(ex, sandbox), 8, seed=21)
    assert result["failure"] is None, result["failure"]
    assert result["examples"] >= 8


def test_the_invariants_can_fail():
    """The checks themselves catch a traceback, a second line and an exit code outside 0/2."""
    for code, err in ((2, "Traceback (most recent call last):\n"), (2, "fsam x: error: a\nmore\n"), (1, "")):
        with pytest.raises(fuzz_files.Failure):
            fuzz_files._check(code, err, ["x"])
    fuzz_files._check(2, "fsam x: error: one line\n", ["x"])
    with pytest.raises(fuzz_files.Failure, match="RecursionError"):
        fuzz_files._expect(lambda: (_ for _ in ()).throw(RecursionError("deep")), (ValueError,), lambda v: True)
