"""Helpers for the safety tests: run the CLI (or a snippet) in a subprocess the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from friendly_sam.train import TrainConfig

FASHION = Path("/usr/share/datasets/fashion-mnist")


def tiny_config(**changes: Any) -> TrainConfig:
    """A run of a few seconds: 128 Fashion-MNIST images, cnn_small, F-SAM, one thread."""
    base: dict[str, Any] = dict(
        data_dir=str(FASHION),
        model="cnn_small",
        method="fsam",
        train_subset=128,
        test_subset=100,
        batch_size=64,
        epochs=1,
        threads=1,
    )
    return TrainConfig(**{**base, **changes})


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python ARGS...`` with this interpreter and PYTHONPATH (one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def fsam(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ``fsam`` command line."""
    return run_python("-m", "friendly_sam.cli", *args, timeout=timeout)
