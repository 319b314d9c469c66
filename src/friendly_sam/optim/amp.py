"""torch.amp.GradScaler plumbing of the two-pass optimizers (apart from the update itself).

A two-pass optimizer has two gradients per step, both scaled: the clean one is unscaled against the
wrapper (``scaler.unscale_(wrapper)``), the perturbed one against the base optimizer (inside
``scaler.step(base_optimizer)``), so ``scaler.update()`` sees an overflow in either.
"""

from __future__ import annotations

import sys

import torch
from torch.optim import Optimizer

__all__ = ["calling_grad_scaler", "unscale_once"]


def unscale_once(scaler: torch.amp.GradScaler, optimizer: Optimizer) -> None:
    """``scaler.unscale_(optimizer)`` for the clean gradient, with a message naming the fix when the user
    already unscaled this optimizer (torch's own message points at the wrong remedy here)."""
    try:
        scaler.unscale_(optimizer)
    except RuntimeError as error:
        if "already been called" not in str(error):
            raise
        raise RuntimeError(
            f"scaler.unscale_() was already called on this {type(optimizer).__name__} since the last "
            "scaler.update(): the optimizer unscales each of its two gradients itself "
            "(first_step(scaler=) and second_step(scaler=), or scaler.step(optimizer, closure)); "
            "do not call scaler.unscale_() on it. To clip the gradient, pass max_grad_norm= to the optimizer"
        ) from None


def calling_grad_scaler(name: str) -> torch.amp.GradScaler:
    """The GradScaler whose ``step(optimizer, closure)`` called the optimizer's ``step`` through torch's
    newer AMP protocol.

    When ``step``'s signature does not show ``grad_scaler`` (accelerate wraps it as ``(*args, **kwargs)``),
    ``GradScaler.step`` sets ``found_inf``/``grad_scale`` on the optimizer instead, measured on the
    gradients present *before* ``step()``: no use to an optimizer that computes both of its gradients
    inside. The scaler itself is on the call stack (``self`` of the calling ``GradScaler.step`` frame); with
    it, both passes are unscaled and recorded exactly as with ``grad_scaler=``. Where it cannot be found,
    refuse rather than apply a scaled gradient."""
    frame = sys._getframe(1)
    for _ in range(16):  # GradScaler.step -> wrappers (accelerate, torch's hooks) -> step -> here
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "step" and isinstance(owner, torch.amp.GradScaler):
            return owner
        frame = frame.f_back
    raise RuntimeError(
        f"{name}.step(): a GradScaler set found_inf/grad_scale on the optimizer instead of passing itself, "
        "and it could not be found: this optimizer computes its gradients inside step() and cannot use a "
        "check made before them. Call first_step(scaler=...) and second_step(scaler=...) around your two "
        "passes instead"
    )
