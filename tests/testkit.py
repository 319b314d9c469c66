"""What many tests share: the real Fashion-MNIST copy, one tiny run, and ways to run ``fsam``.

Run ``fsam`` in a subprocess (:func:`fsam`, :func:`popen_fsam`) where the process is the point (exit codes
seen by a shell, kills, locks, signals, a fresh interpreter); otherwise in-process with the ``cli``
fixture of tests/conftest.py (no torch import per call).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from friendly_sam.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_FASHION_MNIST = (FASHION_DIR / "train-images-idx3-ubyte.gz").exists() and (
    FASHION_DIR / "t10k-images-idx3-ubyte.gz"
).exists()
needs_fashion_mnist = pytest.mark.skipif(
    not HAVE_FASHION_MNIST,
    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; scripts/setup.sh does it)",
)

# One run small enough for tests: 128 Fashion-MNIST training images, cnn_small, one epoch, one thread.
# The data comes from the standard search (FSAM_DATA_DIR, then the Debian copy): add --data-dir to pin it.
TINY = ["--model", "cnn_small", "--train-subset", "128", "--test-subset", "100", "--batch-size", "64"]
TINY += ["--epochs", "1", "--threads", "1", "--quiet"]


def tiny_config(**changes: Any) -> TrainConfig:
    """The same tiny run as :data:`TINY`, as a config (F-SAM unless changed)."""
    base: dict[str, Any] = dict(
        data_dir=str(FASHION_DIR),
        model="cnn_small",
        method="fsam",
        train_subset=128,
        test_subset=100,
        batch_size=64,
        epochs=1,
        threads=1,
    )
    return TrainConfig(**{**base, **changes})


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **(extra or {})}


def run_python(
    *args: str,
    timeout: float = 300,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python ARGS...`` with this interpreter, one OpenMP thread, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fsam(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The ``fsam`` command line in a subprocess, the way a user runs it."""
    return run_python("-m", "friendly_sam.cli", *args, cwd=cwd, env=env, timeout=timeout)


def popen_fsam(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A running ``fsam`` process (to signal or kill), stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "friendly_sam.cli", *args],
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# What .item(), float(t), int(t), bool(t) and torch.equal dispatch to: on an accelerator the host waits for it.
SYNC_OPS = frozenset({"_local_scalar_dense", "item", "is_nonzero", "equal"})


class SyncCounter(TorchDispatchMode):
    """Counts host synchronisations inside the block (``count``), on any device: on CPU the same calls are
    plain reads, so a CPU test proves how many an accelerator would make. Re-enterable."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket.__name__ in SYNC_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))
