"""Training: configuration, the loop and its extension points, evaluation, checkpoints, the run directory."""

from .callbacks import (
    Callback,
    DecompositionCallback,
    EarlyStopping,
    EvaluateEvery,
    NoisyLabelFit,
    TensorBoardCallback,
    TrainState,
)
from .checkpoint import CheckpointError
from .config import TrainConfig
from .data_setup import RunData, prepare_data
from .evaluation import evaluate
from .run_dir import RunDirectoryError, machine_description
from .setup import OptimizerFactory, build_optimizer
from .step import ddp_training_step, is_two_pass, training_step
from .trainer import StepFn, load_run_config, train

__all__ = [
    "Callback",
    "CheckpointError",
    "DecompositionCallback",
    "EarlyStopping",
    "EvaluateEvery",
    "NoisyLabelFit",
    "OptimizerFactory",
    "RunData",
    "RunDirectoryError",
    "StepFn",
    "TensorBoardCallback",
    "TrainConfig",
    "TrainState",
    "build_optimizer",
    "ddp_training_step",
    "evaluate",
    "is_two_pass",
    "load_run_config",
    "machine_description",
    "prepare_data",
    "train",
    "training_step",
]
