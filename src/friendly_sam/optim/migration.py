"""Where users and checkpoints come from: the one place for compatibility with other libraries and with
older state dicts of ours.

* :func:`take_migration_kwargs`: arguments of pytorch-optimizer's SAM/FriendlySAM that a user switching
  the import still passes.
* :func:`check_base_class`: the base optimizer must be a class that steps without a closure.
* :func:`check_base_state` and :func:`upgrade_groups`: state dicts of every format we wrote (1: no base
  class name; 2: no step counter; 3: today's) load, or are refused with the reason.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.optim import Optimizer

from .functional import NORM_EPS

__all__ = ["STATE_FORMAT", "check_base_class", "check_base_state", "take_migration_kwargs", "upgrade_groups"]

# Format of the "two_pass" entry of our state dicts: 1 (no base_class), 2 (no steps), 3 (today).
STATE_FORMAT = 3


def take_migration_kwargs(kwargs: dict[str, Any]) -> None:
    """pytorch-optimizer's ``perturb_eps`` and ``use_gc``: accepted where they mean what we do, refused with our
    equivalent otherwise (never forwarded to the base optimizer, which would raise an unrelated TypeError)."""
    if "perturb_eps" in kwargs:
        eps = kwargs.pop("perturb_eps")
        if eps != NORM_EPS:
            raise ValueError(
                f"perturb_eps={eps!r} (pytorch-optimizer's norm floor) is not adjustable here: the floor is "
                f"fixed at NORM_EPS = {NORM_EPS:g}, the official F-SAM/SAM code's value (and "
                "pytorch-optimizer's default); remove the argument"
            )
    if kwargs.pop("use_gc", False):
        raise ValueError(
            "use_gc=True (pytorch-optimizer's gradient centralization of the perturbation) is not "
            "implemented here; remove the argument (use_gc=False is accepted)"
        )


def check_base_class(base_optimizer: Any, name: str) -> None:
    """A ``torch.optim.Optimizer`` subclass whose ``step()`` needs no closure (LBFGS re-evaluates the loss
    itself: it cannot apply one given gradient, which is what the second step hands it)."""
    if isinstance(base_optimizer, Optimizer):
        raise TypeError(
            f"base_optimizer must be an optimizer class such as torch.optim.SGD, not an instance "
            f"({type(base_optimizer).__name__}); pass the class and give its arguments (lr, momentum, ...) "
            f"to {name} as keyword arguments"
        )
    if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
        raise TypeError(
            f"base_optimizer must be a torch.optim.Optimizer subclass such as torch.optim.SGD, "
            f"got {base_optimizer!r}"
        )
    closure = inspect.signature(base_optimizer.step).parameters.get("closure")
    if issubclass(base_optimizer, torch.optim.LBFGS) or (
        closure is not None and closure.default is closure.empty
    ):
        raise TypeError(
            f"{name} cannot wrap {base_optimizer.__name__}: its step() needs a closure that re-evaluates the "
            f"loss (a line search), while {name}'s base step applies the one perturbed gradient it is given. "
            "Use a first-order optimizer that steps on p.grad (torch.optim.SGD, AdamW, ...)"
        )


def _torch_optimizer_arguments() -> set[str]:
    """Argument names of torch's own optimizers (the keys their param groups carry)."""
    names: set[str] = set()
    for obj in vars(torch.optim).values():
        if isinstance(obj, type) and issubclass(obj, Optimizer) and obj is not Optimizer:
            names |= set(inspect.signature(obj.__init__).parameters)
    return names - {"self", "params"}


def check_base_state(optimizer: Any, meta: dict[str, Any], base_state: dict[str, Any]) -> None:
    """Refuse a state dict whose base optimizer differs from ours (torch would fail with a bare KeyError, or
    load nonsense). Format 1 (no ``base_class``): a saved group key that our base optimizer does not know
    (SGD's momentum in AdamW, AdamW's betas in SGD) betrays another class."""
    ours = type(optimizer.base_optimizer).__name__
    saved = meta.get("base_class")
    if saved is None:
        saved_keys = {k for g in base_state.get("param_groups", []) for k in g}
        foreign = sorted(saved_keys & _torch_optimizer_arguments() - set(optimizer.defaults))
        saved = f"another optimizer (its groups have {', '.join(foreign)})" if foreign else ours
    if saved != ours:
        raise ValueError(
            f"state dict was saved with base optimizer {saved}, this {type(optimizer).__name__} wraps {ours}: "
            f"build the optimizer with the base optimizer it was trained with"
        )


def upgrade_groups(groups: list[dict[str, Any]], defaults: dict[str, Any]) -> None:
    """Groups of state dicts saved before a hyperparameter existed get its default."""
    for group in groups:
        for key, value in defaults.items():
            group.setdefault(key, value)
