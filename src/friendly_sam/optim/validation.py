"""Argument checks shared by the optimizers (one wording for every refusal)."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["check_lr", "check_number", "describe_range"]


def check_number(
    name: str, value: Any, *, low: float, high: float | None = None, closed_high=False, open_low=False
) -> None:
    """Raise ValueError unless ``value`` is a finite real number in ``[low, high)`` (``[low, high]`` with
    ``closed_high``, ``(low, ...`` with ``open_low``; no upper bound when ``high`` is None)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low)
    ok = ok and (high is None or (value <= high if closed_high else value < high))
    if not ok:
        raise ValueError(
            f"invalid {name}={value!r}: it must be a finite number {describe_range(low, high, closed_high=closed_high, open_low=open_low)}"
        )


def describe_range(low: float, high: float | None = None, *, closed_high=False, open_low=False) -> str:
    """``[low, high)``, ``(low, high]``, ``>= low`` or ``> low``: the range of :func:`check_number`."""
    if high is None:
        return f"{'>' if open_low else '>='} {low:g}"
    return f"{'(' if open_low else '['}{low:g}, {high:g}{']' if closed_high else ')'}"


def check_lr(value: Any, where: str = "") -> None:
    """Raise ValueError unless the learning rate is a finite number >= 0 (a one-element tensor counts).
    torch's optimizers accept ``lr=nan`` and ``lr=inf``; a non-finite step would ruin the weights."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"invalid lr{where}: a tensor learning rate must have one element")
        value = float(value)
    check_number("lr" + where, value, low=0.0)
