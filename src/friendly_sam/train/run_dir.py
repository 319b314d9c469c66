"""The run directory: its file names, and the one reader and writer of each file.

A run directory holds::

    config.json       the resolved configuration (written when the run starts)
    metrics.jsonl     one JSON object per epoch (train/val/test loss and accuracy, lr, time, images/s)
    summary.json      written at the end (final and best accuracies, wall time, machine)
    checkpoint.pt     model + optimizer + scheduler + RNG state after the last checkpointed epoch
    label_noise.json  with label noise: the corrupted indices and their noisy labels
    classes.json      --dataset imagefolder: class names in label order, split sizes, skipped files
    analysis.json     written by ``fsam analyze`` (sharpness measures of the checkpoint)
    resumes.jsonl     one JSON object per resume that changed options (--epochs, --device, ...)
    tensorboard/      with ``--tensorboard``: the per-epoch scalars
    .fsam.lock        the lock of the process writing the run (:mod:`friendly_sam.train.lock`)

Every JSON file is strict JSON: a value that is not a finite number (a split not evaluated in an epoch)
is written as ``null``, never as ``NaN``; readers treat ``null`` as "not measured".

Everything that reads or writes these files (the trainer, the commands, the benchmarks) goes through
this module; the checkpoint format itself is :mod:`friendly_sam.train.checkpoint`'s.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint, save_atomic, write_text_atomic
from .config import TrainConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
NOISE_FILE = "label_noise.json"
DATA_RECORD_FILE = "classes.json"
ANALYSIS_FILE = "analysis.json"
TENSORBOARD_DIR = "tensorboard"
RESUMES_FILE = "resumes.jsonl"
LOCK_FILE = ".fsam.lock"
# What a run writes before its first checkpoint: replaced when a fresh start reuses the directory.
LEFTOVER_ENTRIES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, NOISE_FILE, TENSORBOARD_DIR, RESUMES_FILE)
RUN_ENTRIES = (*LEFTOVER_ENTRIES, CHECKPOINT_FILE, LOCK_FILE, ANALYSIS_FILE)


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (holds a run already, holds no run, is not ours, ...)."""


# --------------------------------------------------------------------------- strict JSON
def finite_or_none(obj: Any) -> Any:
    """``obj`` with every float that is not finite (NaN, inf) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None, default: Any = None) -> str:
    """Strict JSON (RFC 8259): non-finite numbers become ``null``; never ``NaN`` or ``Infinity``."""
    return json.dumps(finite_or_none(obj), indent=indent, default=default, allow_nan=False)


def read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``; a damaged file is a :class:`RunDirectoryError` naming ``what`` and the file."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunDirectoryError(f"{what} {path} is damaged ({exc}); it is not valid JSON") from None


# --------------------------------------------------------------------------- config
def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Write (or, on a resume with changed options, rewrite) the run's ``config.json`` atomically.

    Creating the directory and deciding that it is free is :func:`friendly_sam.train.lock.create_run_dir`'s
    job (under the run's lock)."""
    write_text_atomic(run_dir / CONFIG_FILE, cfg.to_json() + "\n")


def read_config_dict(run_dir: Path) -> dict[str, Any]:
    """The raw ``config.json`` of a run (no validation: also for runs of other versions)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    config = read_json(path, "run configuration")
    if not isinstance(config, dict):
        raise RunDirectoryError(f"run configuration {path} is damaged: not a JSON object")
    return config


def read_config(run_dir: Path) -> TrainConfig:
    """The validated configuration of the run in ``run_dir`` (to resume or analyse it)."""
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} holds no run (it does not exist or is not a directory)")
    if not path.is_file():
        raise RunDirectoryError(
            f"{run_dir} holds no run to resume or analyse (no {CONFIG_FILE}); start one with fsam train"
        )
    return TrainConfig.from_saved(read_config_dict(run_dir), source=str(path)).validate()


def record_resume(run_dir: Path, entry: dict[str, Any]) -> None:
    """Append what a resume changed (epoch, changed options) to ``resumes.jsonl``."""
    with open(run_dir / RESUMES_FILE, "a") as f:
        f.write(dumps(entry) + "\n")


# --------------------------------------------------------------------------- metrics
def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records in ``metrics.jsonl``, in order; ``[]`` when there are none yet.

    ``null`` values (splits not evaluated that epoch) stay None; a damaged line is a
    :class:`RunDirectoryError` naming the file and line (except a torn last line without its newline:
    an append cut short by a kill, ignored)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            if number == len(lines) and not text.endswith("\n"):
                break  # the torn end of an append cut short by a kill: that epoch was never completed
            raise RunDirectoryError(f"{path} line {number} is damaged (not a per-epoch JSON record)")
        records.append(record)
    return records


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record; refused when the run directory lost its ``config.json`` meanwhile
    (removed or emptied while the run was writing it: appending would leave a run with a gap)."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirectoryError(
            f"the run directory {run_dir} was removed or emptied while the run was writing it; start anew"
        )
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(dumps(record) + "\n")


def rewrite_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` atomically (on resume: drop epochs after the checkpoint)."""
    write_text_atomic(run_dir / METRICS_FILE, "".join(dumps(m) + "\n" for m in records))


# --------------------------------------------------------------------------- summary, noise, checkpoint
def has_summary(run_dir: Path) -> bool:
    return (run_dir / SUMMARY_FILE).is_file()


def read_summary(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / SUMMARY_FILE, "run summary")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_text_atomic(run_dir / SUMMARY_FILE, dumps(summary, indent=2) + "\n")


def has_label_noise(run_dir: Path) -> bool:
    return (run_dir / NOISE_FILE).is_file()


def write_label_noise(run_dir: Path, cfg: TrainConfig, indices: list[int], noisy_labels: list[int]) -> None:
    payload = {
        "rate": cfg.label_noise,
        "kind": cfg.noise_kind,
        "seed": cfg.seed,
        "indices": indices,
        "noisy_labels": noisy_labels,
    }
    write_text_atomic(run_dir / NOISE_FILE, dumps(payload))


def read_label_noise(run_dir: Path) -> dict[str, Any] | None:
    """The ``label_noise.json`` of a run, or None for a run without label noise."""
    path = run_dir / NOISE_FILE
    return read_json(path, "label noise file") if path.is_file() else None


def has_data_record(run_dir: Path) -> bool:
    return (run_dir / DATA_RECORD_FILE).is_file()


def write_data_record(run_dir: Path, record: dict[str, Any]) -> None:
    """``classes.json``: an image folder's record (``ImageFolderData.record()``: classes, skipped files)."""
    write_text_atomic(run_dir / DATA_RECORD_FILE, json.dumps(record, indent=1) + "\n")


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT_FILE).is_file()


def read_checkpoint(
    run_dir: Path,
    config: dict[str, Any] | None = None,
    path: Path | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The run's checkpoint (``path`` instead of ``checkpoint.pt`` if given), checked as
    :func:`~friendly_sam.train.checkpoint.load_checkpoint` documents."""
    return load_checkpoint(path or run_dir / CHECKPOINT_FILE, config, note=note)


def write_checkpoint(run_dir: Path, checkpoint: dict[str, Any]) -> None:
    save_atomic(checkpoint, run_dir / CHECKPOINT_FILE)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """An extra JSON file in a run directory (e.g. ``analysis.json``), written atomically."""
    write_text_atomic(path, dumps(payload, indent=1, default=str) + "\n")


# --------------------------------------------------------------------------- machine
def machine_description() -> dict[str, Any]:
    """The machine a run or a measurement ran on: CPU model, torch threads, versions, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
