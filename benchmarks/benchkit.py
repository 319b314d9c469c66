"""The benchmarks' shared kit: machine description, git state, memory accounting, mean ± std, reports.

Every benchmark imports it as ``from benchmarks import benchkit`` (the benchmarks are a package, run from
the repository root with ``python -m benchmarks.<name>``).
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from friendly_sam.reporting import mean_std
from friendly_sam.train.run_dir import machine_description

REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "REPO",
    "git_commit",
    "held_bytes",
    "machine",
    "mean_std",
    "pto_version",
    "python_module",
    "src_env",
    "start_worker",
    "step_alloc_peak",
    "write_report",
]


# --------------------------------------------------------------------------- machine and code state
def git_commit(short: bool = True) -> str:
    """The repository's HEAD commit, or ``"unknown"`` outside a git checkout."""
    args = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        return subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def pto_version() -> str | None:
    """The installed pytorch-optimizer version, or None."""
    try:
        return importlib.metadata.version("pytorch-optimizer")
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(**extra: Any) -> dict[str, Any]:
    """The trainer's machine description plus what a benchmark report needs: CPU count, load average,
    commit, pytorch-optimizer version; ``extra`` keys are added (e.g. ``torch_threads``)."""
    return {
        **machine_description(),
        "cpu_count": os.cpu_count(),
        "pytorch_optimizer": pto_version(),
        "commit": git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **extra,
    }


def src_env(**extra: str) -> dict[str, str]:
    """The environment for a benchmark's subprocess: this checkout's ``src`` and root (the ``benchmarks``
    package) first on ``PYTHONPATH``."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), env.get("PYTHONPATH")]))
    return env


def python_module(name: str) -> list[str]:
    """The command line that runs benchmark module ``name`` (e.g. ``__spec__.name``) in a new interpreter;
    run it with ``cwd=REPO`` and :func:`src_env`."""
    return [sys.executable, "-m", name]


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the suite process dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def start_worker(cmd: list[str], log: Path, header: str) -> subprocess.Popen[Any]:
    """Start one run of a suite: ``cmd`` in this checkout (:func:`src_env`, one thread), its output appended
    to ``log`` after a line ``=== <time> <header>``; it gets SIGTERM when this process dies (Linux)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = src_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log, "a") as f:  # the child keeps its own copy of the descriptor
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n")
        f.flush()
        return subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, preexec_fn=_die_with_parent
        )


# --------------------------------------------------------------------------- memory accounting
def _tensors_in(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors_in(v)]
    return []


def held_bytes(opt: Any, params: list[torch.Tensor]) -> int:
    """Bytes of distinct tensor storages an optimizer keeps between steps beyond parameters and gradients:
    its state, its base optimizer's state, and the buffers it reports through ``buffer_tensors()`` (ours:
    saved weights, F-SAM's EMA and gradient copy). Works for any optimizer (pytorch-optimizer's too)."""
    exclude = {p.untyped_storage().data_ptr() for p in params}
    exclude |= {p.grad.untyped_storage().data_ptr() for p in params if p.grad is not None}
    tensors = _tensors_in(dict(opt.state))
    base = getattr(opt, "base_optimizer", None)
    if base is not None:
        tensors += _tensors_in(dict(base.state))
    if callable(getattr(opt, "buffer_tensors", None)):
        tensors += _tensors_in(opt.buffer_tensors())
    seen: dict[int, int] = {}
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
    return sum(seen.values())


def step_alloc_peak(step: Callable[[], Any]) -> int:
    """Peak of CPU tensor bytes newly allocated (net of frees) while ``step()`` runs, from torch.profiler's
    memory events: activations, gradients, temporaries and per-step copies."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    running = peak = 0
    for e in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]):
        if e["args"].get("Device Type", 0) == 0:  # CPU
            running += int(e["args"]["Bytes"])
            peak = max(peak, running)
    return peak


# --------------------------------------------------------------------------- reports
def write_report(out_dir: Path, prefix: str, markdown: str, payload: dict[str, Any]) -> tuple[Path, Path]:
    """``<out_dir>/<prefix>.md`` and ``<prefix>.json`` (indent 1); returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{prefix}.md", out_dir / f"{prefix}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(payload, indent=1) + "\n")
    return md, js
