"""Fixtures every test directory shares (the shared constants and subprocess runners: testkit.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """Every test runs with one intra-op thread, and leaves the count as it found it (``fsam train``
    sets it from ``--threads``). The models in tests are tiny; on the shared 2-core machines, and with
    one pytest-xdist worker per core, more threads only oversubscribe the cores (several times slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class CliResult:
    """What an in-process ``fsam`` call returned and printed (the fields of ``CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """``cli("train", "--out", ...)``: ``fsam`` in this process through ``friendly_sam.cli.main``, with
    its exit status (argparse's ``SystemExit`` included) and captured output; use a subprocess
    (testkit.fsam) only where the process itself is under test."""

    def run(*args: str) -> CliResult:
        from friendly_sam.cli import main as fsam_main  # imported when used: collection stays light

        capsys.readouterr()
        try:
            code = fsam_main(list(args))
        except SystemExit as exc:  # argparse (2), or sys.exit(message) as the interpreter would print it
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run
