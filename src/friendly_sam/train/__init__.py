"""Training: configuration, the loop, evaluation, checkpoints, run comparison."""

from .checkpoint import CheckpointError
from .config import TrainConfig
from .step import training_step
from .trainer import RunDirectoryError, build_optimizer, evaluate, load_run_config, train

__all__ = [
    "CheckpointError",
    "RunDirectoryError",
    "TrainConfig",
    "build_optimizer",
    "evaluate",
    "load_run_config",
    "train",
    "training_step",
]
