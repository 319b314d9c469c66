"""The run directory: its file names, and the one reader and writer of each file.

A run directory holds::

    config.json       the resolved configuration (written when the run starts)
    metrics.jsonl     one JSON object per epoch (train/val/test loss and accuracy, lr, time, images/s)
    summary.json      written at the end (final and best accuracies, wall time, machine)
    checkpoint.pt     model + optimizer + scheduler + RNG state after the last checkpointed epoch
    label_noise.json  with label noise: the corrupted indices and their noisy labels
    classes.json      --dataset imagefolder: class names in label order, split sizes, skipped files
    analysis.json     written by ``fsam analyze`` (sharpness measures of the checkpoint)
    tensorboard/      with ``--tensorboard``: the per-epoch scalars

Everything that reads or writes these files (the trainer, the commands, the benchmarks) goes through
this module; the checkpoint format itself is :mod:`friendly_sam.train.checkpoint`'s.
"""

from __future__ import annotations

import json
import platform
import sys
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


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (exists already, or holds no run to resume)."""


# --------------------------------------------------------------------------- config
def check_free(run_dir: Path) -> None:
    """Refuse a run directory that holds files: it is never silently overwritten."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirectoryError(
            f"run directory {run_dir} already exists and is not empty; continue it with "
            f"`fsam train --resume {run_dir}`, or choose another --out"
        )


def create(run_dir: Path, cfg: TrainConfig) -> None:
    """Create a fresh run directory holding ``config.json``; never reuse one that holds files."""
    check_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_FILE, cfg.to_json() + "\n")


def read_config_dict(run_dir: Path) -> dict[str, Any]:
    """The raw ``config.json`` of a run (no validation: also for runs of other versions)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    return json.loads(path.read_text())


def read_config(run_dir: Path) -> TrainConfig:
    """The validated configuration of the run in ``run_dir`` (to resume or analyse it)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(
            f"{run_dir} holds no run to resume (no {CONFIG_FILE}); start one with fsam train"
        )
    return TrainConfig.from_dict(json.loads(path.read_text()), source=str(path)).validate()


# --------------------------------------------------------------------------- metrics
def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records in ``metrics.jsonl``, in order; ``[]`` when there are none yet."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def rewrite_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` atomically (on resume: drop epochs after the checkpoint)."""
    write_text_atomic(run_dir / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in records))


# --------------------------------------------------------------------------- summary, noise, checkpoint
def has_summary(run_dir: Path) -> bool:
    return (run_dir / SUMMARY_FILE).is_file()


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / SUMMARY_FILE).read_text())


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


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
    write_text_atomic(run_dir / NOISE_FILE, json.dumps(payload))


def read_label_noise(run_dir: Path) -> dict[str, Any] | None:
    """The ``label_noise.json`` of a run, or None for a run without label noise."""
    path = run_dir / NOISE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def has_data_record(run_dir: Path) -> bool:
    return (run_dir / DATA_RECORD_FILE).is_file()


def write_data_record(run_dir: Path, record: dict[str, Any]) -> None:
    """``classes.json``: an image folder's record (``ImageFolderData.record()``: classes, skipped files)."""
    write_text_atomic(run_dir / DATA_RECORD_FILE, json.dumps(record, indent=1) + "\n")


def read_data_record(run_dir: Path) -> dict[str, Any] | None:
    """The ``classes.json`` of an image-folder run, or None for a run on a built-in data set."""
    path = run_dir / DATA_RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT_FILE).is_file()


def read_checkpoint(
    run_dir: Path, config: dict[str, Any] | None = None, path: Path | None = None
) -> dict[str, Any]:
    """The run's checkpoint (``path`` instead of ``checkpoint.pt`` if given), checked as
    :func:`~friendly_sam.train.checkpoint.load_checkpoint` documents."""
    return load_checkpoint(path or run_dir / CHECKPOINT_FILE, config)


def write_checkpoint(run_dir: Path, checkpoint: dict[str, Any]) -> None:
    save_atomic(checkpoint, run_dir / CHECKPOINT_FILE)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """An extra JSON file in a run directory (e.g. ``analysis.json``), written atomically."""
    write_text_atomic(path, json.dumps(payload, indent=1, default=str) + "\n")


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
