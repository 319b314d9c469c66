"""Framework-independent pieces shared by the integrations (no third-party import here)."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from ..optim import TwoPassOptimizer


def unwrap_two_pass(optimizer: Any) -> TwoPassOptimizer | None:
    """The :class:`TwoPassOptimizer` behind a framework's optimizer wrapper (Lightning's
    ``LightningOptimizer``, accelerate's ``AcceleratedOptimizer``, ...), or ``None`` for a plain optimizer.
    Wrappers keep the wrapped optimizer in ``.optimizer`` (or ``._optimizer``); a few levels are followed."""
    for _ in range(4):  # innermost first: Lightning's wrapper is itself an instance of the optimizer's class
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, Optimizer) or inner is optimizer:
            break
        optimizer = inner
    return optimizer if isinstance(optimizer, TwoPassOptimizer) else None


def require_two_pass(optimizer: Any, where: str) -> TwoPassOptimizer:
    sam = unwrap_two_pass(optimizer)
    if sam is None:
        raise TypeError(
            f"{where} needs a friendly_sam optimizer (FriendlySAM or SAM), got {type(optimizer).__name__}; "
            "build it as FriendlySAM(params, torch.optim.SGD, rho=..., lr=...)"
        )
    return sam


def check_single_clip(sam: TwoPassOptimizer, max_norm: float | None) -> None:
    """Refuse clipping in two places (the optimizer's ``max_grad_norm`` and the framework's), before any
    step runs: the second clip would unscale an fp16 gradient twice."""
    if max_norm and max_norm > 0 and sam.max_grad_norm is not None:
        raise ValueError(
            f"the perturbed gradient would be clipped twice: the optimizer has max_grad_norm="
            f"{sam.max_grad_norm} and the framework clips to {max_norm}; set one of them only"
        )


def clip_perturbed_gradient(
    sam: TwoPassOptimizer, max_norm: float | None, scaler: torch.amp.GradScaler | None
) -> torch.Tensor:
    """Clip the perturbed gradient (the one the base optimizer applies) to ``max_norm`` (no clipping for
    None/0) before ``second_step``; returns its global norm before clipping (unscaled). With a scaler and
    clipping, the gradient is unscaled first, recorded against the base optimizer, exactly as
    ``second_step(scaler=...)`` expects (it then does not unscale again)."""
    params = [p for group in sam.param_groups for p in group["params"] if p.grad is not None]
    if not max_norm or max_norm <= 0:
        if not params:
            return torch.zeros(())
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        return norm / scaler.get_scale() if scaler is not None else norm
    check_single_clip(sam, max_norm)
    if scaler is not None:
        scaler.unscale_(sam.base_optimizer)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
