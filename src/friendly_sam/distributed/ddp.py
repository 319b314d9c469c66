"""The two perturbation modes of SAM / F-SAM under ``DistributedDataParallel``.

``per-replica`` (default; SAM's "m-sharpness"): every replica perturbs with the gradient of its own local
batch and keeps its own F-SAM EMA. ``synchronized``: the first gradient is all-reduced too, so every
replica perturbs with the global-batch gradient. The step itself is
:func:`friendly_sam.train.step.ddp_training_step` (it builds on the single-process training step, and
``train`` sits above this package); see docs/distributed.md.
"""

from __future__ import annotations

PER_REPLICA = "per-replica"
SYNCHRONIZED = "synchronized"
PERTURBATION_MODES = (PER_REPLICA, SYNCHRONIZED)

__all__ = ["PERTURBATION_MODES", "PER_REPLICA", "SYNCHRONIZED", "check_mode"]


def check_mode(mode: str) -> str:
    if mode not in PERTURBATION_MODES:
        raise ValueError(
            f"unknown perturbation mode {mode!r}; choose one of: {', '.join(PERTURBATION_MODES)}"
        )
    return mode
