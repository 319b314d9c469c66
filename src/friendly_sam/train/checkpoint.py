"""Atomic, checksummed, validated checkpoints: a crash never corrupts the previous one, a bad file is refused.

A checkpoint is an ordinary ``torch.save`` file holding one dict of tensors, numbers, strings, lists and
dicts (so ``torch.load(path, weights_only=True)`` reads it anywhere). Since format version 2 the dict
carries ``checksum``: a SHA-256 over a canonical walk of every other entry (keys, types, numbers, tensor
dtypes, shapes and raw bytes). :func:`load_checkpoint` reads with ``weights_only=True`` (a planted pickle
payload is never executed), verifies the checksum (one flipped bit in any tensor is caught), then checks
the structure and types (:func:`validate_checkpoint`) before the caller touches anything.

Version 1 files (written before the checksum existed) are still read: ``weights_only=True`` makes that
safe, but bit rot in them cannot be detected, so a note says so.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..files import WriteError, load_torch_file, remove_stale_temp_files, write_atomic, write_text_atomic
from .config import EPOCHS_KEY, IDENTITY_KEYS, SAFE_KEYS, TrainConfig, differences, run_setting

FORMAT = "friendly-sam-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no checksum (read with a note)
CHECKSUM_KEY = "checksum"
CHECKSUM_ALGORITHM = "sha256-canonical-v1"
# Entries every checkpoint written by the trainer holds, with their types.
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "config": dict,
    "epoch": int,
    "elapsed": (int, float),
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
}
OPTIONAL_KEYS: dict[str, type | tuple[type, ...]] = {
    "replica_states": list,
    "world_size": int,
    "data": dict,
    "callbacks": dict,  # the callbacks' state_dict()s, by key (only when one has state)
}

__all__ = [
    "CHECKSUM_KEY",
    "FORMAT",
    "IDENTITY_KEYS",
    "VERSION",
    "CheckpointError",
    "WriteError",
    "ResumeCheck",
    "check_resume_config",
    "checkpoint_digest",
    "load_checkpoint",
    "load_state_checked",
    "make_checkpoint",
    "remove_stale_temp_files",
    "save_atomic",
    "validate_checkpoint",
    "write_text_atomic",
]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, foreign or from an incompatible run."""


# --------------------------------------------------------------------------- writing
def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically through the file layer (temporary file, fsync, rename; a link at
    ``path`` is replaced, never followed); a checkpoint dict gets its checksum.

    ``obj`` made by :func:`make_checkpoint` is stored with a ``checksum`` entry over all its other
    entries; anything else is saved as given. A failed write is a :class:`WriteError` and leaves the
    previous file."""
    path = Path(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
        obj = {**body, CHECKSUM_KEY: {"algorithm": CHECKSUM_ALGORITHM, "sha256": checkpoint_digest(body)}}
    write_atomic(path, lambda f: torch.save(obj, f))


def make_checkpoint(config: dict[str, Any], **parts: Any) -> dict[str, Any]:
    """The checkpoint dict: format tag, version, the run's config and ``parts`` (epoch, model, ...)."""
    return {"format": FORMAT, "version": VERSION, "config": config, **parts}


# --------------------------------------------------------------------------- checksum
def checkpoint_digest(obj: Any) -> str:
    """SHA-256 (hex) over a canonical walk of ``obj``: dict keys in order, types, values, tensor bytes.

    Only the types a checkpoint may hold are accepted (tensors, None, bool, int, float, str, bytes,
    lists, tuples, dicts); anything else raises :class:`CheckpointError`."""
    h = hashlib.sha256()
    _feed(obj, h)
    return h.hexdigest()


def _feed(obj: Any, h: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key, value in obj.items():
            _feed(key, h)
            _feed(value, h)
    elif isinstance(obj, (list, tuple)):  # one tag: both are sequences after a round trip
        h.update(f"L{len(obj)};".encode())
        for item in obj:
            _feed(item, h)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise CheckpointError(
            f"a checkpoint holds only tensors, numbers, strings, lists and dicts, not {type(obj).__name__}"
        )


# --------------------------------------------------------------------------- reading
def load_checkpoint(
    path: str | Path,
    config: dict[str, Any] | None = None,
    *,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load, verify and validate a checkpoint; with ``config``, also check it can continue that run.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, holds anything but
    plain data (never executed: ``weights_only=True``), fails its checksum, lacks an entry or has a
    wrong type, or (with ``config``) belongs to another run setting (:func:`check_resume_config`; the
    epochs-may-grow rule is applied there). ``note`` receives remarks (a version-1 file without
    checksum); default: :func:`warnings.warn`."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(
            f"no checkpoint at {path} (it does not exist): the run has not finished an epoch yet, start it anew"
        )
    ckpt = load_torch_file(path, "checkpoint", CheckpointError)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a friendly-sam checkpoint")
    version = ckpt.get("version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this code reads {READABLE_VERSIONS}"
        )
    if version >= 2:
        _verify_checksum(ckpt, path)
    else:
        (note or (lambda m: warnings.warn(m, stacklevel=3)))(
            f"checkpoint {path} has format version 1 (no checksum): loaded safely (weights only), but "
            "damage to it cannot be detected; the next checkpoint of the run will carry one"
        )
    validate_checkpoint(ckpt, path)
    if config is not None:
        for message in check_resume_config(ckpt["config"], config, ckpt["epoch"], str(path)).messages:
            (note or (lambda m: warnings.warn(m, stacklevel=3)))(f"resuming {path}: {message}")
    return ckpt


def _verify_checksum(ckpt: dict[str, Any], path: Path) -> None:
    stored = ckpt.get(CHECKSUM_KEY)
    if not isinstance(stored, dict) or stored.get("algorithm") != CHECKSUM_ALGORITHM:
        raise CheckpointError(f"checkpoint {path} has no valid checksum entry: it is damaged; refused")
    body = {k: v for k, v in ckpt.items() if k != CHECKSUM_KEY}
    if checkpoint_digest(body) != stored.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its content does not match its checksum (disk or copy error). "
            "Restore it from a backup or start the run anew."
        )


def validate_checkpoint(ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> None:
    """Check entries and types before anything is loaded from ``ckpt``; :class:`CheckpointError` if wrong.

    Required: format (str), version (int), config (dict), epoch (int >= 0), elapsed (finite number
    >= 0), model (dict of str -> tensor), optimizer (dict with ``state`` and ``param_groups``),
    scheduler (dict), rng (dict with ``torch``: a uint8 tensor). Optional: replica_states (list of
    dicts), world_size (int >= 1), data (dict: the data fingerprint, :mod:`friendly_sam.data.identity`).
    Tensor shapes against the model are checked by :func:`load_state_checked`."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is invalid: {why}")

    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise bad(f"missing entries {', '.join(missing)}")
    for key, kind in {**REQUIRED_KEYS, **OPTIONAL_KEYS}.items():
        value = ckpt.get(key)
        if key in ckpt and (not isinstance(value, kind) or isinstance(value, bool)):
            raise bad(f"'{key}' is a {type(value).__name__}")
    if ckpt["epoch"] < 0:
        raise bad(f"epoch {ckpt['epoch']} is negative")
    if not math.isfinite(ckpt["elapsed"]) or ckpt["elapsed"] < 0:
        raise bad(f"elapsed {ckpt['elapsed']!r} is not a time")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        raise bad("'model' must map parameter names to tensors")
    if not {"state", "param_groups"} <= set(ckpt["optimizer"]):
        raise bad("'optimizer' lacks 'state' or 'param_groups'")
    rng = ckpt["rng"].get("torch")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        raise bad("'rng' lacks the torch generator state (a uint8 tensor)")
    try:  # on a generator of its own: the global one is restored only once everything is checked
        torch.Generator().set_state(rng)
    except (RuntimeError, ValueError) as exc:
        raise bad(f"'rng' is not a torch generator state ({' '.join(str(exc).split())[:120]})") from None
    if not all(isinstance(s, dict) for s in ckpt.get("replica_states", [])):
        raise bad("'replica_states' must be a list of dicts")
    if ckpt.get("world_size", 1) < 1:
        raise bad(f"world_size {ckpt['world_size']} is not a process count")


def load_state_checked(target: Any, state: Any, path: str | Path, part: str) -> None:
    """``target.load_state_dict(state)``, its errors (missing keys, wrong shapes) as a :class:`CheckpointError`.

    ``target`` is a module, optimizer or scheduler; ``part`` names it in the message ("model", ...)."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        detail = " ".join(str(exc).split())[:400] or type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path}: its {part} state does not fit this run ({detail}); was it written by "
            "another model or optimizer?"
        ) from exc


# --------------------------------------------------------------------------- resume rules
@dataclass
class ResumeCheck:
    """What resuming changes: ``changes`` maps each safe key that differs to (checkpoint, now)."""

    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


def check_resume_config(
    saved: dict[str, Any], current: dict[str, Any], done_epochs: int, source: str = "checkpoint"
) -> ResumeCheck:
    """Compare a checkpoint's config with the current one; refuse any change of the trajectory.

    Every :class:`TrainConfig` field declares its resume class (:mod:`friendly_sam.train.config`):
    ``IDENTITY_KEYS`` must be equal (else :class:`CheckpointError` listing every difference),
    ``SAFE_KEYS`` may differ (each difference gives a message), ``epochs`` may change as long as it is
    at least ``done_epochs`` (fewer is refused: a checkpoint of epoch 6 cannot continue a 4-epoch run);
    a change stretches or shrinks the learning-rate schedule from this point on, which the message says.
    A key absent from one side counts as its :class:`TrainConfig` default and old spellings are upgraded
    (configs of older versions); the comparison is :func:`~friendly_sam.train.config.differences`."""
    unknown = sorted((set(saved) | set(current)) - set(TrainConfig().to_dict()) - set(TrainConfig.RENAMED))
    changed = differences(saved, current, [*IDENTITY_KEYS, *unknown])
    diffs = [f"{k}: checkpoint {old!r} vs now {new!r}" for k, (old, new) in sorted(changed.items())]
    setting = run_setting(current, [EPOCHS_KEY, "schedule", "warmup_epochs"])
    epochs_now = setting[EPOCHS_KEY]
    if isinstance(epochs_now, int) and done_epochs > epochs_now:
        diffs.append(
            f"epochs: the checkpoint has {done_epochs} epochs done, more than the {epochs_now} asked"
        )
    if diffs:
        raise CheckpointError(f"checkpoint {source} belongs to a different run setting ({'; '.join(diffs)})")
    check = ResumeCheck(differences(saved, current, [*sorted(SAFE_KEYS), EPOCHS_KEY]))
    check.messages = [f"{key} changed from {old!r} to {new!r}" for key, (old, new) in check.changes.items()]
    if EPOCHS_KEY in check.changes:
        old, new = check.changes[EPOCHS_KEY]
        effect = (
            "the learning rate is constant, so nothing else changes"
            if setting["schedule"] == "constant" and not setting["warmup_epochs"]
            else f"the learning-rate schedule now spans {new} epochs from here on (the next steps' lr "
            "differs from the one planned)"
        )
        check.messages[-1] = f"epochs changed from {old} to {new} after {done_epochs} done: {effect}"
    return check
