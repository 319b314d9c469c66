"""Shared launcher: the 2-process (gloo, CPU) scenarios of dist_worker.py run once per test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

WORLD = 2
WORKER = Path(__file__).with_name("dist_worker.py")

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)


@pytest.fixture(scope="session")
def dist_results(tmp_path_factory) -> list[dict]:
    """Per-rank results of every scenario (a file rendezvous: no ports to pick)."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "WORLD_SIZE": str(WORLD), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out / "rdzv"), str(out)],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(WORLD)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log}"
        assert (out / f"rank{r}.json").exists(), f"rank {r} exited 0 without writing its results:\n{log}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that read dist_results share one 2-process launch (about 10 s idle): the slow tier."""
    for item in items:
        if "dist_results" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
