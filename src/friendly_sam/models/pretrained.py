"""Starting from saved weights: :func:`load_pretrained` (``--pretrained PATH``, ``--new-head``).

The file is untrusted data: it is read with ``torch.load(..., weights_only=True)``, which loads
tensors and plain containers only, never code. Accepted content: a state dict, or a dict holding
one under ``"model"`` (a friendly-sam checkpoint), ``"state_dict"`` (PyTorch Lightning, timm) or
``"model_state_dict"``; the prefixes ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) are
removed.

Fine-tuning on another number of classes: ``new_head=True`` leaves the classifier (the model's
last ``nn.Linear``) freshly initialised and loads everything else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import load_torch_file

__all__ = [
    "PretrainedReport",
    "PretrainedWeightsError",
    "classifier_name",
    "load_pretrained",
    "read_state_dict",
]

_CONTAINER_KEYS = ("model", "state_dict", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


class PretrainedWeightsError(ValueError):
    """The weights file cannot be read or does not fit the model; the message says why and what to do."""


@dataclass(frozen=True)
class PretrainedReport:
    """What :func:`load_pretrained` did: tensors loaded, and the model's keys left as initialised."""

    path: str
    loaded: int
    missing: tuple[str, ...]  # in the model, not in the file: left as initialised
    unexpected: tuple[str, ...]  # in the file, not in the model: ignored
    new_head: tuple[str, ...]  # classifier tensors left freshly initialised (new_head=True)

    def summary(self) -> str:
        """One line for the log."""
        parts = [f"loaded {self.loaded} tensors from {self.path}"]
        if self.new_head:
            parts.append(f"new head: {', '.join(self.new_head)}")
        for what, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:5])}{more}")
        return "; ".join(parts)


def classifier_name(model: nn.Module) -> str:
    """Name of the model's classifier: its last ``nn.Linear`` (``fc`` for the built-in models)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise PretrainedWeightsError(f"{type(model).__name__} has no nn.Linear classifier to replace")
    return names[-1]


def _strip(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (see the module docstring), loaded with ``weights_only=True``."""
    p = Path(path).expanduser()
    if not p.exists() and not p.is_symlink():
        raise PretrainedWeightsError(f"--pretrained {p}: no such file")
    # regular files only (a FIFO never blocks), weights_only=True (a planted pickle never runs)
    obj = load_torch_file(p, "--pretrained", PretrainedWeightsError)
    if isinstance(obj, dict):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise PretrainedWeightsError(
            f"--pretrained {p}: holds no state dict (a dict of tensors, possibly under "
            f"{', '.join(repr(k) for k in _CONTAINER_KEYS)}); got {type(obj).__name__}"
        )
    return _strip({str(k): v for k, v in obj.items()})


def load_pretrained(
    model: nn.Module, path: str | os.PathLike[str], *, new_head: bool = False
) -> PretrainedReport:
    """Load the weights in ``path`` into ``model`` (in place); report what was not loaded.

    Args:
        new_head: leave the classifier (:func:`classifier_name`) as initialised, for fine-tuning on
            other classes; without it, a classifier of another shape is an error suggesting it.

    Raises:
        PretrainedWeightsError: unreadable file, no tensor matching the model, or tensors whose
            shapes differ from the model's (the message lists them).
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head = classifier_name(model) + "." if new_head else None
    dropped = tuple(k for k in own if head is not None and k.startswith(head))
    state = {k: v for k, v in state.items() if k not in dropped}
    clash = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if clash:
        cls = classifier_name(model) + "."
        hint = (
            " The classifier differs (another number of classes): pass --new-head to fine-tune with a new one."
            if any(k.startswith(cls) for k in clash)
            else " The file is for another architecture or size."
        )
        shown = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in clash[:4])
        raise PretrainedWeightsError(f"--pretrained {path}: shapes differ from the model's: {shown}.{hint}")
    matched = [k for k in state if k in own]
    if not matched:
        raise PretrainedWeightsError(
            f"--pretrained {path}: none of its {len(state)} tensors match the model's parameter names "
            f"(e.g. file {next(iter(state))!r}, model {next(iter(own))!r}): it is for another model"
        )
    result = model.load_state_dict(state, strict=False)
    missing = tuple(k for k in result.missing_keys if k not in dropped)
    return PretrainedReport(str(path), len(matched), missing, tuple(result.unexpected_keys), dropped)
