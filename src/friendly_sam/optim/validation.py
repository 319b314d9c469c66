"""Argument checks shared by the optimizers (one wording for every refusal)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from .collectives import is_process_group

__all__ = [
    "check_fraction",
    "check_lr",
    "check_new_params",
    "check_number",
    "check_options",
    "check_schedule",
    "describe_range",
]


def check_number(
    name: str,
    value: Any,
    *,
    low: float,
    high: float | None = None,
    closed_high: bool = False,
    open_low: bool = False,
    where: str = "",
) -> None:
    """Raise ValueError unless ``value`` is a finite real number in ``[low, high)`` (``[low, high]`` with
    ``closed_high``, ``(low, ...`` with ``open_low``; no upper bound when ``high`` is None)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low)
    ok = ok and (high is None or (value <= high if closed_high else value < high))
    if not ok:
        bound = describe_range(low, high, closed_high=closed_high, open_low=open_low)
        raise ValueError(f"invalid {name}={value!r}{where}: it must be a finite number {bound}")


def describe_range(
    low: float, high: float | None = None, *, closed_high: bool = False, open_low: bool = False
) -> str:
    """``[low, high)``, ``(low, high]``, ``>= low`` or ``> low``: the range :func:`check_number` accepts."""
    if high is None:
        return f"{'>' if open_low else '>='} {low}"
    return f"{'(' if open_low else '['}{low}, {high}{']' if closed_high else ')'}"


def check_lr(value: Any, where: str = "") -> None:
    """Raise ValueError unless the learning rate is a finite number >= 0 (a one-element tensor counts).
    torch's optimizers accept ``lr=nan`` and ``lr=inf``; a non-finite step would ruin the weights."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"invalid lr{where}: a tensor learning rate must have one element")
        value = float(value)
    check_number("lr" + where, value, low=0.0)


def check_fraction(name: str, value: Any) -> float:
    """A fraction in ``(0, 1]`` (``ascent_fraction``), returned as a float."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and 0.0 < value <= 1.0):
        raise ValueError(f"invalid {name}={value!r}: it must be a number in (0, 1] (1: the whole batch)")
    return float(value)


def check_schedule(perturb_every: Any, between: Any, looksam_alpha: Any, process_group: Any) -> None:
    """``perturb_every``, ``between`` and ``looksam_alpha`` (the efficient variants, docs/efficient.md)."""
    if isinstance(perturb_every, bool) or not isinstance(perturb_every, int) or perturb_every < 1:
        raise ValueError(
            f"invalid perturb_every={perturb_every!r}: it must be an integer >= 1 (1: every step perturbs)"
        )
    if between not in ("base", "looksam"):
        raise ValueError(
            f"invalid between={between!r}: use 'base' (plain base steps between perturbed ones) or "
            "'looksam' (reuse the last measured sharpness component)"
        )
    check_number("looksam_alpha", looksam_alpha, low=0.0)
    if between == "looksam" and process_group is not None:
        raise ValueError(
            "between='looksam' is not supported with a sharded process_group (its projection needs a "
            "global dot product); use between='base'"
        )


def check_new_params(name: str, params: list[torch.Tensor], known: set[int], where: str) -> None:
    """Refuse parameters the two passes cannot handle: listed twice (in this group or an earlier one: the
    perturbation would move it twice), on the meta device or not yet materialised (lazy modules)."""
    seen: set[int] = set()
    for i, p in enumerate(params):
        if isinstance(p, torch.nn.parameter.UninitializedParameter):
            raise ValueError(
                f"{name}: parameter {i}{where} is not initialised yet (a lazy module, e.g. nn.LazyLinear): run "
                "one forward pass on a batch first, then build the optimizer from model.parameters()"
            )
        if p.device.type == "meta":
            raise ValueError(
                f"{name}: parameter {i}{where} (shape {tuple(p.shape)}) is on the meta device and holds no "
                "values: materialise the model first (model.to_empty(device=...) and initialise or load its "
                "weights), then build the optimizer from its parameters"
            )
        if id(p) in seen or id(p) in known:
            place = "twice in this group" if id(p) in seen else "in an earlier param group too"
            raise ValueError(
                f"{name}: parameter {i}{where} (shape {tuple(p.shape)}) is listed {place}: it would be perturbed "
                "and stepped twice. List each parameter once (deduplicate shared/tied weights)"
            )
        seen.add(id(p))


def check_options(max_grad_norm: Any, foreach: Any, process_group: Any, replica_group: Any) -> None:
    if max_grad_norm is not None:
        check_number("max_grad_norm", max_grad_norm, low=0.0)
        if max_grad_norm == 0:
            raise ValueError("invalid max_grad_norm=0: use None to disable clipping, or a positive norm")
    if foreach not in (None, True, False):
        raise ValueError(f"invalid foreach={foreach!r}: use None (automatic), True or False")
    for name, group, role in (
        ("process_group", process_group, "over which the parameters are sharded"),
        ("replica_group", replica_group, "of the DDP replicas that perturb independently"),
    ):
        if group is not None and not is_process_group(group):
            raise TypeError(
                f"{name} must be a torch.distributed ProcessGroup (e.g. dist.group.WORLD) {role}, "
                f"or None; got {group!r}"
            )


def check_base_kwargs(name: str, own: list[str], base_optimizer: type, kwargs: dict[str, Any]) -> None:
    """Every keyword the wrapper does not take must be one of the base optimizer's arguments."""
    parameters = inspect.signature(base_optimizer.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return  # the base optimizer takes anything: it checks its own arguments
    unknown = [k for k in kwargs if k not in parameters or k in ("self", "params")]
    if unknown:
        theirs = [n for n in parameters if n not in ("self", "params")]
        raise TypeError(
            f"{name}: unknown argument(s) {', '.join(unknown)}. {name}'s own arguments: "
            f"{', '.join(dict.fromkeys(own))}; every other keyword goes to the base optimizer "
            f"{base_optimizer.__name__}, whose arguments are: {', '.join(theirs)}"
        )
