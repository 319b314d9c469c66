"""A diverging run stops before it overwrites anything good: the loss and weight checks of the trainer."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .callbacks import TrainState

__all__ = ["DIVERGENCE_LOSS", "all_finite", "check_diverged", "check_weights_finite"]

# A run has diverged when an epoch's mean training loss (or any loss) is not finite or exceeds this: a
# classifier guessing uniformly scores ln(classes) (2.3 for 10), so 1e6 is far outside any learning run.
DIVERGENCE_LOSS = 1e6


def check_diverged(state: TrainState, epoch: int, losses: dict[str, float | None]) -> None:
    """Stop a diverging run: any loss not finite or above :data:`DIVERGENCE_LOSS` is a FloatingPointError
    that says what was kept (nothing of this epoch is written)."""
    bad = [
        f"{name} {value:.4g}"
        for name, value in losses.items()
        if value is not None and not (math.isfinite(value) and value <= DIVERGENCE_LOSS)
    ]
    if not bad:
        return
    saved = state.checkpoint_epoch
    kept = (
        f"the last good checkpoint (epoch {saved}) is kept" if saved else "no checkpoint had been written yet"
    )
    raise FloatingPointError(
        f"training diverged in epoch {epoch + 1}/{state.cfg.epochs}: {', '.join(bad)} (a run stops when a "
        f"loss is not finite or above {DIVERGENCE_LOSS:g}); nothing of this epoch was written and {kept}. "
        "Lower --lr or --rho (or set --max-grad-norm) and start the run anew"
    )


def all_finite(state: TrainState) -> bool:
    """Whether every floating-point value of the model and the optimizer state is finite."""
    tensors = [*state.model.state_dict().values()]
    for per_param in state.optimizer.state_dict().get("state", {}).values():
        tensors += [v for v in per_param.values() if isinstance(v, Tensor)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def check_weights_finite(state: TrainState, epoch: int) -> None:
    """Never checkpoint a non-finite model or optimizer state (the previous checkpoint stays)."""
    if not all_finite(state):
        check_diverged(state, epoch, {"a weight or optimizer state value": math.nan})
