"""Extension points of :func:`friendly_sam.train.train`: callbacks and the state they see.

A callback subclasses :class:`Callback` and overrides the hooks it needs (all are no-ops by default).
The trainer calls them in this order::

    on_train_start(state)                      once: data, model, optimizer built (and restored on resume)
    per epoch:
        before_step(step, epoch)               before every training step
        on_epoch_record(record)                training part of the epoch's record done: add keys here
        splits_to_evaluate(epoch, available)   which evaluation splits to measure after this epoch
        on_epoch_end(record)                   the complete record, after it is appended to metrics.jsonl
    on_train_end(summary)                      summary.json's contents, before it is written: add keys here

``step`` is 0-based over the whole run, ``epoch`` in ``before_step`` is the 0-based epoch in progress;
the record's ``"epoch"`` and the ``epoch`` of ``splits_to_evaluate`` are 1-based (the number of epochs
completed). Under ``torchrun`` every rank runs the callbacks; the choice of splits must agree on all ranks
(evaluation is a collective). The trainer's own optional features, the TensorBoard writer and the
decomposition monitor, are callbacks too (:class:`TensorBoardCallback`, :class:`DecompositionCallback`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis import DecompositionMonitor
from .config import TrainConfig
from .data_setup import RunData, clean_training_subset
from .evaluation import evaluate
from .run_dir import TENSORBOARD_DIR
from .step import autocast_context

__all__ = [
    "Callback",
    "DecompositionCallback",
    "EvaluateEvery",
    "NoisyLabelFit",
    "TensorBoardCallback",
    "TrainState",
    "require_tensorboard",
]


@dataclass
class TrainState:
    """What a run is made of, handed to :meth:`Callback.on_train_start` (callbacks may keep it).

    ``model`` is the bare module (not the DDP wrapper); ``optimizer`` whatever the optimizer factory
    built; ``data`` the prepared data (its ``eval_sets`` may be changed in ``on_train_start``, e.g. to
    evaluate a smaller test set). ``epoch`` is the number of completed epochs (updated by the trainer
    after each epoch's record; ``start_epoch`` on resume), ``metrics`` the records so far.
    """

    cfg: TrainConfig
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: RunData
    device: torch.device
    is_main: bool  # rank 0 (or the only process): the one that writes files
    steps_per_epoch: int
    start_epoch: int = 0
    epoch: int = 0
    elapsed_before: float = 0.0  # wall time of the epochs before a resume
    checkpoint_epoch: int = 0  # the epoch of the last checkpoint written (or resumed from)
    metrics: list[dict[str, Any]] = field(default_factory=list)


class Callback:
    """Base class of trainer callbacks; every hook is a no-op unless overridden."""

    def on_train_start(self, state: TrainState) -> None:
        """Once, before the first step (also on resume)."""

    def before_step(self, step: int, epoch: int) -> None:
        """Before training step ``step`` (0-based over the run) of the 0-based ``epoch``."""

    def on_epoch_record(self, record: dict[str, Any]) -> None:
        """The training part of an epoch's record (loss, accuracy, lr, time); may add keys."""

    def splits_to_evaluate(self, epoch: int, available: Sequence[str]) -> Sequence[str]:
        """Which of ``available`` splits (e.g. ``("val", "test")``) to evaluate after the 1-based ``epoch``.

        A split left out records None (``null``) as loss and accuracy for this epoch (never a stale value). With several
        callbacks each narrows the previous choice."""
        return available

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """The complete record of an epoch, after it is appended to ``metrics.jsonl`` (do not modify)."""

    def on_train_end(self, summary: dict[str, Any]) -> None:
        """The run's summary before ``summary.json`` is written (only once every epoch finished); may add
        keys."""


def require_tensorboard() -> Any:
    """TensorBoard's ``SummaryWriter`` class, or a clear error naming the package to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ModuleNotFoundError(
            "--tensorboard needs the tensorboard package: pip install tensorboard (or drop --tensorboard)"
        ) from exc
    return SummaryWriter


class TensorBoardCallback(Callback):
    """``--tensorboard``: every numeric key of every epoch's record as a scalar in ``RUN_DIR/tensorboard``."""

    def __init__(self) -> None:
        self._writer_cls = require_tensorboard()  # fails before any data is loaded
        self.writer: Any = None

    def on_train_start(self, state: TrainState) -> None:
        self.writer = self._writer_cls(str(state.run_dir / TENSORBOARD_DIR))

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["epoch"])

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.writer.close()


class DecompositionCallback(Callback):
    """``--full-gradient oracle`` and ``--decomposition``: the oracle full gradient before the steps that need
    it and the decomposition measures in each epoch's record; see
    :mod:`friendly_sam.analysis.decomposition` for what is computed on which data."""

    def __init__(self) -> None:
        self.monitor: DecompositionMonitor | None = None

    def on_train_start(self, state: TrainState) -> None:
        cfg, device, loader = state.cfg, state.device, state.data.train_loader
        fixed = None
        if cfg.decomposition:
            fixed = clean_training_subset(state.data, cfg.decomposition_subset, cfg.seed, device)
        self.monitor = DecompositionMonitor(
            state.model,
            state.optimizer,
            loader,
            oracle_every=cfg.oracle_every if cfg.full_gradient == "oracle" else None,
            diagnostics=cfg.decomposition,
            diagnostics_every=cfg.decomposition_every,
            subset=fixed,
            batch_size=cfg.batch_size,
            autocast=lambda: autocast_context(device, cfg.bf16),
            prepare=(lambda x: x.contiguous(memory_format=torch.channels_last))
            if cfg.channels_last
            else None,
        )

    def before_step(self, step: int, epoch: int) -> None:
        assert self.monitor is not None
        self.monitor.before_step(step, epoch)

    def on_epoch_record(self, record: dict[str, Any]) -> None:
        assert self.monitor is not None
        record.update(self.monitor.epoch_record())


class EvaluateEvery(Callback):
    """Evaluate ``split`` only after epoch 1, every ``every``-th epoch and the last of ``epochs`` (the other
    splits every epoch). Skipped epochs record null for that split (never a stale value); the final
    accuracy is always measured. For splits that cost more to evaluate than the training epoch itself."""

    def __init__(self, split: str, every: int, epochs: int) -> None:
        if every < 1:
            raise ValueError(f"evaluation interval must be >= 1 epoch, got {every}")
        self.split, self.every, self.epochs = split, every, epochs

    def splits_to_evaluate(self, epoch: int, available: Sequence[str]) -> Sequence[str]:
        if epoch == 1 or epoch % self.every == 0 or epoch == self.epochs:
            return available
        return [s for s in available if s != self.split]


class NoisyLabelFit(Callback):
    """With label noise: ``noisy_fit`` in each epoch's record, the share (%) of the corrupted training images
    that the model (eval mode, no augmentation) assigns to their *wrong* training label: how much of the
    noise it has memorised (0 = none; chance is about 10 % for 10 classes).

    A forward pass over the corrupted images only; it uses no randomness and leaves BatchNorm statistics
    alone, so training is unchanged."""

    def __init__(self) -> None:
        self.state: TrainState | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.state = state

    def on_epoch_record(self, record: dict[str, Any]) -> None:
        state = self.state
        assert state is not None
        data, cfg = state.data, state.cfg
        if data.noisy_indices is None or len(data.noisy_indices) == 0:
            return
        noisy = data.training_samples(data.noisy_indices, cfg.eval_batch_size, state.device)
        _, record["noisy_fit"] = evaluate(state.model, noisy, cfg, state.device)


def builtin_callbacks(cfg: TrainConfig, is_main: bool) -> list[Callback]:
    """The callbacks a configuration asks for (the noisy-label fit with label noise, the decomposition monitor,
    ``--tensorboard`` on the main process)."""
    callbacks: list[Callback] = [NoisyLabelFit()] if cfg.label_noise > 0 else []
    if cfg.full_gradient == "oracle" or cfg.decomposition:
        callbacks.append(DecompositionCallback())
    if cfg.tensorboard and is_main:
        callbacks.append(TensorBoardCallback())
    return callbacks


class CallbackList(Callback):
    """Several callbacks as one, called in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_train_start(state)

    def before_step(self, step: int, epoch: int) -> None:
        for cb in self.callbacks:
            cb.before_step(step, epoch)

    def on_epoch_record(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_record(record)

    def splits_to_evaluate(self, epoch: int, available: Sequence[str]) -> Sequence[str]:
        chosen = list(available)
        for cb in self.callbacks:
            chosen = [s for s in cb.splits_to_evaluate(epoch, tuple(chosen)) if s in chosen]
        return chosen

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(record)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_train_end(summary)
