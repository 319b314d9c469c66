"""Framework-independent pieces shared by the integrations (no third-party import here)."""

from __future__ import annotations

from typing import Any

from ..optim import TwoPassOptimizer, engine


def unwrap_two_pass(optimizer: Any) -> TwoPassOptimizer | None:
    """The friendly_sam optimizer behind a framework's optimizer wrapper (Lightning's ``LightningOptimizer``,
    accelerate's ``AcceleratedOptimizer``, ...), or ``None`` for any other optimizer."""
    sam = engine.unwrap_two_pass(optimizer)
    return sam if isinstance(sam, TwoPassOptimizer) else None


def require_two_pass(optimizer: Any, where: str) -> TwoPassOptimizer:
    sam = unwrap_two_pass(optimizer)
    if sam is None:
        raise TypeError(
            f"{where} needs a friendly_sam optimizer (FriendlySAM or SAM), got {type(optimizer).__name__}; "
            "build it as FriendlySAM(params, torch.optim.SGD, rho=..., lr=...)"
        )
    return sam
