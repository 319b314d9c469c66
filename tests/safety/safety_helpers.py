"""Helpers for the safety tests: run the CLI (or a snippet) in a subprocess the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python ARGS...`` with this interpreter and PYTHONPATH (one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def fsam(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ``fsam`` command line."""
    return run_python("-m", "friendly_sam.cli", *args, timeout=timeout)
