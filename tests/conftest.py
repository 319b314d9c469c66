"""Test plumbing for the whole suite (never part of the package): one intra-op thread per test, the in-process
``cli`` fixture (the shared constants and subprocess runners are in testkit.py), and torchvision's operators.

torchvision on CPU-only torch: PyPI's torchvision 0.28.0 (the build for torch 2.13) ships a ``_C.so``
linked against CUDA libraries. Next to the CPU torch it fails to load, torchvision's own import tolerates
that, but its ``_meta_registrations`` then register fake kernels for ``torchvision::nms`` and
``torchvision::qnms``, operators that do not exist, and the import (and timm's, which imports torchvision)
fails. :func:`define_torchvision_operators` defines just those two operator schemas (no kernels: calling
``nms`` would raise) before anything imports torchvision, only when ``_C.so`` cannot load, so that the
timm adapter (tests/integrations/test_timm.py, the matrix's timm row) and ``--model torchvision:`` /
``timm:`` (tests/models) run here instead of skipping. Where ``_C.so`` loads (a CUDA machine) nothing is
defined. The package never does this (docs/integrations.md, "timm").
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

_TORCHVISION_LIBRARY: torch.library.Library | None = None  # kept alive: its definitions die with it


def define_torchvision_operators() -> bool:
    """Define ``torchvision::nms`` / ``qnms`` if torchvision is installed and its ``_C.so`` cannot load;
    returns whether they were defined here."""
    global _TORCHVISION_LIBRARY
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None or _TORCHVISION_LIBRARY is not None:
        return False
    extensions = sorted(Path(spec.origin).parent.glob("_C*.so"))
    try:
        if extensions:
            torch.ops.load_library(str(extensions[0]))
            return False  # the real operators are there
    except OSError:
        pass  # e.g. libcudart.so missing: the case this plumbing is for
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_LIBRARY = library
    return True


define_torchvision_operators()


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


@pytest.fixture(autouse=True)
def _python_handles_ctrl_c() -> Iterator[None]:
    """Every test ends with Python's own Ctrl-C handler in place. Libraries under test change it
    process-wide (Lightning ignores SIGINT while it tears a process group down and leaves it ignored if that
    fails, or at SIG_DFL): a later test, and every process it starts (an ignored SIGINT is inherited), would
    not see Ctrl-C as a user's program does."""
    yield
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
