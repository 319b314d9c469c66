"""The one state of the step machine: :class:`Phase`, and :class:`StepState`, everything a step changes
besides tensors.

It lives in its own plain object (``optimizer._run``), not in attributes of the optimizer: torch.compile
(dynamo, torch 2.13) drops attribute assignments on ``torch.optim.Optimizer`` instances made inside a
compiled region (it models optimizers specially), while assignments on a plain object are replayed. So a
compiled ``first_step`` / ``second_step`` / whole train step keeps the phase, the step counter and the
capturable mask right.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["Phase", "StepState"]


class Phase(enum.Enum):
    """Where the optimizer is within one step."""

    IDLE = "idle"  # between steps: first_step() comes next
    PERTURBED = "perturbed"  # the weights are w + e: run the second pass, then second_step()
    SKIPPING = (
        "skipping"  # the clean gradient overflowed under a GradScaler: second_step() skips the base step
    )
    STEPPED = "stepped"  # an unperturbed step (perturb_every > 1) already stepped: second_step() closes it


class StepState:
    """The mutable host-side state of the step machine."""

    def __init__(self) -> None:
        self.phase = Phase.IDLE
        self.open: list[Any] = []  # the buckets first_step perturbed (restored by second_step)
        self.steps = 0  # full steps finished (perturbed or not): decides which steps perturb
        self.component_valid = False  # LookSAM: the "looksam" buffers hold a measured component
        self.grads_from_step = False  # p.grad holds what our last step(closure) left (its second pass)
        self.ok: Any = None  # decided on the device: whether the clean direction was usable (a bool tensor)
        self.norm: Any = None  # decided on the device: the direction's global norm (a float64 0-dim tensor)
        self.deferred = False  # default mode, this step's checks read in second_step (accelerators)
        self.state_mask: Any = None  # capturable: set while the method's state is updated
