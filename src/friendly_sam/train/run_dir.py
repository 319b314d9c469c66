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
this module, and this module through the file layer (:mod:`friendly_sam.files`): reads are bounded
(size, nesting, integer sizes) and never block on a FIFO, writes never follow a link planted in the run
directory and are atomic or single appends; the checkpoint format itself is
:mod:`friendly_sam.train.checkpoint`'s.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..files import append_line, parse_json, read_json_file, read_jsonl_file, update_file, write_text_atomic
from .checkpoint import load_checkpoint, save_atomic
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


# What each entry of a run directory must be (anything else, a symbolic link above all, is refused).
ENTRY_KINDS = {name: "file" for name in RUN_ENTRIES if name != TENSORBOARD_DIR} | {TENSORBOARD_DIR: "dir"}


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
    """The JSON in ``path`` (bounded, never blocking); a damaged or refused file is a
    :class:`RunDirectoryError` naming ``what`` and the file."""
    return read_json_file(path, what, RunDirectoryError)


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """:func:`read_json` of a file that must hold a JSON object."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise RunDirectoryError(
            f"{what} {path} is damaged: it holds a JSON {type(value).__name__}, not an object"
        )
    return value


# --------------------------------------------------------------------------- config
def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Write (or, on a resume with changed options, rewrite) the run's ``config.json`` atomically.

    Creating the directory and deciding that it is free is :func:`friendly_sam.train.lock.create_run_dir`'s
    job (under the run's lock)."""
    write_text_atomic(run_dir / CONFIG_FILE, cfg.to_json() + "\n")


def read_config_dict(run_dir: Path) -> dict[str, Any]:
    """The raw ``config.json`` of a run (no validation: also for runs of other versions)."""
    path = run_dir / CONFIG_FILE
    if not os.path.lexists(path):
        raise RunDirectoryError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    return read_json_object(path, "run configuration")


def read_config(run_dir: Path) -> TrainConfig:
    """The validated configuration of the run in ``run_dir`` (to resume or analyse it)."""
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} holds no run (it does not exist or is not a directory)")
    if not os.path.lexists(path):
        raise RunDirectoryError(
            f"{run_dir} holds no run to resume or analyse (no {CONFIG_FILE}); start one with fsam train"
        )
    return TrainConfig.from_saved(read_config_dict(run_dir), source=str(path)).validate()


def record_resume(run_dir: Path, entry: dict[str, Any]) -> None:
    """Append what a resume changed (epoch, changed options) to ``resumes.jsonl`` (never through a link)."""
    append_line(run_dir / RESUMES_FILE, dumps(entry), "resume record")


# --------------------------------------------------------------------------- metrics
def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records in ``metrics.jsonl``, in order; ``[]`` when there are none yet.

    ``null`` values (splits not evaluated that epoch) stay None; a damaged line is a
    :class:`RunDirectoryError` naming the file and line (except a torn last line without its newline:
    an append cut short by a kill, ignored)."""
    path = run_dir / METRICS_FILE
    if not os.path.lexists(path):
        return []
    lines, complete = read_jsonl_file(path, "metrics file", RunDirectoryError)
    records: list[dict[str, Any]] = []
    for index, (number, record) in enumerate(lines):
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int) or isinstance(record["epoch"], bool):
            if index == len(lines) - 1 and not complete:
                break  # the torn end of an append cut short by a kill: that epoch was never completed
            raise RunDirectoryError(f"{path} line {number} is damaged (not a per-epoch JSON record)")
        wrong = [k for k, v in record.items() if _NUMERIC.search(k) and not _number_or_null(v)]
        if wrong:
            raise RunDirectoryError(f"{path} line {number} is damaged: {wrong[0]!r} is not a number")
        if record["epoch"] != len(records) + 1:
            after = f"follows epoch {records[-1]['epoch']}" if records else "is the first record"
            raise RunDirectoryError(
                f"{path} line {number} is damaged: epoch {record['epoch']} {after} (epochs must run 1, 2, 3, ...)"
            )
        records.append(record)
    return records


_NUMERIC = re.compile(r"(_loss|_acc|_time|^lr|^images_per_s|^elapsed)$")  # the trainer's numbers


def _number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def metrics_until(run_dir: Path, epoch: int) -> list[dict[str, Any]]:
    """The records of epochs 1..``epoch`` (a resume from the checkpoint of ``epoch`` drops later ones);
    a :class:`RunDirectoryError` when any of them is missing (``metrics.jsonl`` deleted or cut): the run's
    numbers and summary come from them, so it is not continued without them."""
    records = [m for m in read_metrics(run_dir) if m["epoch"] <= epoch]
    if [m["epoch"] for m in records] != list(range(1, epoch + 1)):
        have = f"epochs {records[0]['epoch']}..{records[-1]['epoch']}" if records else "no epoch"
        raise RunDirectoryError(
            f"{run_dir / METRICS_FILE} holds {have} but the checkpoint is at epoch {epoch}: the per-epoch "
            "records were deleted or cut. Restore the file (the run's numbers and summary.json come from it) "
            "or start the run anew"
        )
    return records


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record; refused when the run directory lost its ``config.json`` meanwhile
    (removed or emptied while the run was writing it: appending would leave a run with a gap)."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirectoryError(
            f"the run directory {run_dir} was removed or emptied while the run was writing it; start anew"
        )
    append_line(run_dir / METRICS_FILE, dumps(record), "metrics file")


def rewrite_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` atomically (on resume: drop epochs after the checkpoint)."""
    write_text_atomic(run_dir / METRICS_FILE, "".join(dumps(m) + "\n" for m in records))


# --------------------------------------------------------------------------- summary, noise, checkpoint
def has_summary(run_dir: Path) -> bool:
    return (run_dir / SUMMARY_FILE).is_file()


def read_summary(run_dir: Path) -> dict[str, Any]:
    return read_json_object(run_dir / SUMMARY_FILE, "run summary")


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
    return read_json_object(path, "label noise file") if os.path.lexists(path) else None


def has_data_record(run_dir: Path) -> bool:
    return (run_dir / DATA_RECORD_FILE).is_file()


def write_data_record(run_dir: Path, record: dict[str, Any]) -> None:
    """``classes.json``: an image folder's record (``ImageFolderData.record()``: classes, skipped files)."""
    write_text_atomic(run_dir / DATA_RECORD_FILE, json.dumps(record, indent=1) + "\n")


def read_data_record(run_dir: Path) -> dict[str, Any] | None:
    """The ``classes.json`` of an image-folder run, or None for a run on a built-in data set."""
    path = run_dir / DATA_RECORD_FILE
    return read_json_object(path, "data record") if os.path.lexists(path) else None


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
    """An extra JSON file in a run directory, written atomically."""
    write_text_atomic(path, dumps(payload, indent=1, default=str) + "\n")


def update_json(path: Path, what: str, merge: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
    """Read-merge-write the JSON object in ``path`` under a lock (:func:`friendly_sam.files.update_file`):
    ``merge(current object or None)`` returns the new one. Two processes updating one file (two
    ``fsam analyze`` on one run) both land. A file that holds no JSON object is refused, not replaced."""

    def update(old: bytes | None) -> bytes:
        current = None
        if old is not None:
            current = parse_json_object(old, path, what)
        return (dumps(merge(current), indent=1, default=str) + "\n").encode()

    return json.loads(update_file(path, update, what))


def parse_json_object(data: bytes, path: Path, what: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RunDirectoryError(f"{what} {path} is damaged: not UTF-8 text; move it away or delete it") from None
    value = parse_json(text, f"{what} {path}", RunDirectoryError)
    if not isinstance(value, dict):
        raise RunDirectoryError(
            f"{what} {path} is damaged: it holds a JSON {type(value).__name__}, not an object; move it away or "
            "delete it"
        )
    return value


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
