"""Atomic, validated checkpoints: a crash never corrupts the previous one, a wrong file is refused."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "friendly-sam-checkpoint"
VERSION = 1
# Options that must match for a checkpoint to continue a run (the rest may change, e.g. threads).
IDENTITY_KEYS = (
    "dataset",
    "model",
    "optimizer",
    "base",
    "seed",
    "batch_size",
    "label_noise",
    "noise_kind",
    "train_subset",
    "val_size",
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, foreign or from an incompatible run."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_checkpoint(config: dict[str, Any], **parts: Any) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "config": config, **parts}


def load_checkpoint(path: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load and check a checkpoint; with ``config``, also check it belongs to the same run setting."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: the run has not finished an epoch yet, start it anew"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, ...
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a friendly-sam checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {ckpt.get('version')}, this code reads {VERSION}"
        )
    if config is not None:
        diffs = [
            f"{k}: checkpoint {ckpt['config'].get(k)!r} vs now {config.get(k)!r}"
            for k in IDENTITY_KEYS
            if ckpt["config"].get(k) != config.get(k)
        ]
        if diffs:
            raise CheckpointError(
                f"checkpoint {path} belongs to a different run setting ({'; '.join(diffs)})"
            )
    return ckpt
