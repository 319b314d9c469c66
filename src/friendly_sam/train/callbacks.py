"""Extension points of :func:`friendly_sam.train.train`: callbacks and the one state every hook receives.

A callback subclasses :class:`Callback` and overrides the hooks it needs (all are no-ops by default). Every
hook has one signature, ``hook(state)``: :class:`TrainState` holds the run (model, optimizer, data, ...) and
what the hook is about (``state.step``, ``state.record``, ``state.summary``, ``state.exception``). The
trainer calls them in this order::

    on_train_start(state)       once: data, model, optimizer built (and restored on resume)
    per epoch:
        before_step(state)      before every training step (state.step; state.epoch: the epoch in progress)
        after_step(state)       after it (state.loss: the step's clean loss, a detached tensor)
        on_epoch_record(state)  the training part of the epoch's record is in state.record: add keys here
        before_evaluation(state)  narrow state.splits: the evaluation splits measured after this epoch
        on_epoch_end(state)     the complete record, after it is appended to metrics.jsonl
    on_train_end(state)         state.summary: summary.json's contents, before it is written: add keys here
    on_exception(state)         the run failed (state.exception; also KeyboardInterrupt), before it propagates
    teardown(state)             always last, once on_train_start was reached: success, failure or interrupt

``state.step`` is 0-based over the whole run; ``state.epoch`` is the number of completed epochs, which is
also the 0-based index of the epoch in progress; ``state.record["epoch"]`` is 1-based (the epochs completed
with it). **Stopping**: a hook sets ``state.should_stop = True`` (and ``state.stop_reason``); the run ends
after the current epoch: its record is written, a checkpoint saved, and ``summary.json`` says
``"stopped_early"`` (a resume of such a run reports it finished). **State across resume**: a callback's
:meth:`~Callback.state_dict` is saved in every checkpoint (under :attr:`~Callback.key`) and handed to its
:meth:`~Callback.load_state_dict` on resume, before ``on_train_start``. Under ``torchrun`` every rank runs
the callbacks; the choice of splits and of stopping must agree on all ranks (evaluation is a collective).
The trainer's own optional features are callbacks too (:func:`builtin_callbacks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .data_setup import RunData, clean_training_subset
from .decomposition import DecompositionMonitor
from .evaluation import evaluate
from .run_dir import TENSORBOARD_DIR
from .step import autocast_context

__all__ = [
    "Callback",
    "CallbackList",
    "DecompositionCallback",
    "EarlyStopping",
    "EvaluateEvery",
    "NoisyLabelFit",
    "TensorBoardCallback",
    "TrainState",
    "builtin_callbacks",
    "require_tensorboard",
]


@dataclass
class TrainState:
    """The run, handed to every hook. ``model`` is the bare module (not the DDP wrapper); ``optimizer``
    whatever the optimizer factory built; ``data`` the prepared data (its ``eval_sets`` may be changed in
    ``on_train_start``, e.g. to evaluate a smaller test set). ``metrics`` holds the records so far."""

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
    epoch: int = 0  # epochs completed (updated after each epoch's record; start_epoch on resume)
    elapsed_before: float = 0.0  # wall time of the epochs before a resume
    checkpoint_epoch: int = 0  # the epoch of the last checkpoint written (or resumed from)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    # what the current hook is about
    step: int = 0  # the training step (0-based over the run) of before_step / after_step
    loss: Tensor | None = None  # after_step: the step's clean loss (detached; no device sync)
    record: dict[str, Any] = field(default_factory=dict)  # the epoch's record (on_epoch_record onwards)
    splits: list[str] = field(default_factory=list)  # before_evaluation: the splits to measure
    summary: dict[str, Any] = field(default_factory=dict)  # on_train_end: summary.json's contents
    exception: BaseException | None = None  # on_exception, teardown: why the run failed
    should_stop: bool = False  # set by a callback: end the run after the current epoch
    stop_reason: str = ""


class Callback:
    """Base class of trainer callbacks; every hook is a no-op unless overridden."""

    @property
    def key(self) -> str:
        """The name of this callback's state in a checkpoint (override for two of one class)."""
        return type(self).__name__

    def on_train_start(self, state: TrainState) -> None:
        """Once, before the first step (also on resume, after :meth:`load_state_dict`)."""

    def before_step(self, state: TrainState) -> None:
        """Before training step ``state.step`` of the 0-based epoch ``state.epoch``."""

    def after_step(self, state: TrainState) -> None:
        """After training step ``state.step``; ``state.loss`` is its clean loss."""

    def on_epoch_record(self, state: TrainState) -> None:
        """The training part of the epoch's record (loss, accuracy, lr, time) is ``state.record``; may
        add keys."""

    def before_evaluation(self, state: TrainState) -> None:
        """May narrow ``state.splits`` (e.g. ``["val", "test"]``), the splits evaluated after this epoch; a
        split left out records None (``null``) as loss and accuracy for this epoch, never a stale value."""

    def on_epoch_end(self, state: TrainState) -> None:
        """``state.record`` is complete and appended to ``metrics.jsonl`` (do not modify)."""

    def on_train_end(self, state: TrainState) -> None:
        """``state.summary`` before ``summary.json`` is written (only once the run completed); may add keys."""

    def on_exception(self, state: TrainState) -> None:
        """The run failed with ``state.exception``, which propagates afterwards."""

    def teardown(self, state: TrainState) -> None:
        """Always, last (success, failure or interrupt): release files, writers, processes."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback needs to continue after a resume (saved in each checkpoint; plain data and
        tensors only). Empty: nothing is saved."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume, before ``on_train_start``)."""


class CallbackList:
    """Several callbacks as one, called in order. ``on_exception`` and ``teardown`` reach every callback
    even when one of them raises (the first such error is raised after all ran)."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)
        keys = [cb.key for cb in self.callbacks if type(cb).state_dict is not Callback.state_dict]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"two callbacks with state share the key {twice[0]!r}: give each its own key")

    def call(self, hook: str, state: TrainState) -> None:
        """``hook(state)`` of every callback, in order (``on_train_start``, ``before_step``, ...)."""
        for cb in self.callbacks:
            getattr(cb, hook)(state)

    def call_all(self, hook: str, state: TrainState) -> None:
        """Like :meth:`call`, but every callback runs even when one raises (``on_exception``, ``teardown``:
        a writer must close even then); the first error is raised at the end."""
        failure: Exception | None = None
        for cb in self.callbacks:
            try:
                getattr(cb, hook)(state)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Each callback's non-empty state, by key (what a checkpoint stores)."""
        return {cb.key: s for cb in self.callbacks if (s := cb.state_dict())}

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> list[str]:
        """Hand each callback its saved state; returns the saved keys that no callback takes now."""
        mine = {cb.key: cb for cb in self.callbacks}
        for key, state in states.items():
            if key in mine:
                mine[key].load_state_dict(state)
        return sorted(set(states) - set(mine))


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
    """``--tensorboard``: every numeric key of every epoch's record as a scalar in ``RUN_DIR/tensorboard``;
    the writer is closed however the run ends."""

    def __init__(self) -> None:
        self._writer_cls = require_tensorboard()  # fails before any data is loaded
        self.writer: Any = None

    def on_train_start(self, state: TrainState) -> None:
        self.writer = self._writer_cls(str(state.run_dir / TENSORBOARD_DIR))

    def on_epoch_end(self, state: TrainState) -> None:
        for key, value in state.record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, state.record["epoch"])

    def teardown(self, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class DecompositionCallback(Callback):
    """``--full-gradient oracle`` and ``--decomposition``: the oracle full gradient before the steps that
    need it and the decomposition measures in each epoch's record; see
    :mod:`friendly_sam.train.decomposition` for what is computed on which data."""

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

    def before_step(self, state: TrainState) -> None:
        assert self.monitor is not None
        self.monitor.before_step(state.step, state.epoch)

    def on_epoch_record(self, state: TrainState) -> None:
        assert self.monitor is not None
        state.record.update(self.monitor.epoch_record())


class EvaluateEvery(Callback):
    """Evaluate ``split`` only after epoch 1, every ``every``-th epoch and the last of ``epochs`` (the other
    splits every epoch). Skipped epochs record null for that split (never a stale value); the final
    accuracy is always measured. For splits that cost more to evaluate than the training epoch itself."""

    def __init__(self, split: str, every: int, epochs: int) -> None:
        if every < 1:
            raise ValueError(f"evaluation interval must be >= 1 epoch, got {every}")
        self.split, self.every, self.epochs = split, every, epochs

    def before_evaluation(self, state: TrainState) -> None:
        epoch = state.record["epoch"]
        if not (epoch == 1 or epoch % self.every == 0 or epoch == self.epochs):
            state.splits = [s for s in state.splits if s != self.split]


class NoisyLabelFit(Callback):
    """With label noise: ``noisy_fit`` in each epoch's record, the share (%) of the corrupted training images
    that the model (eval mode, no augmentation) assigns to their *wrong* training label: how much of the
    noise it has memorised (0 = none; chance is about 10 % for 10 classes).

    A forward pass over the corrupted images only; it uses no randomness and leaves BatchNorm statistics
    alone, so training is unchanged."""

    def on_epoch_record(self, state: TrainState) -> None:
        data, cfg = state.data, state.cfg
        if data.noisy_indices is None or len(data.noisy_indices) == 0:
            return
        noisy = data.training_samples(data.noisy_indices, cfg.eval_batch_size, state.device)
        _, state.record["noisy_fit"] = evaluate(state.model, noisy, cfg, state.device)


class EarlyStopping(Callback):
    """Stop the run when ``metric`` (a key of the epoch record: ``val_loss``, ``val_acc``, ...) has not
    improved by more than ``min_delta`` for ``patience`` epochs (``mode``: ``"min"`` or ``"max"``). Epochs
    where the metric was not measured (null) do not count. Its best value and count are saved with the run
    and restored on resume. The run ends after that epoch, with a checkpoint (docs/trainer.md)."""

    def __init__(
        self, metric: str = "val_loss", patience: int = 3, mode: str = "min", min_delta: float = 0.0
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode={mode!r}: use 'min' or 'max'")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping patience={patience!r}: use an integer >= 1 (epochs)")
        self.metric, self.patience, self.mode, self.min_delta = metric, patience, mode, float(min_delta)
        self.best: float | None = None
        self.bad_epochs = 0

    def on_epoch_end(self, state: TrainState) -> None:
        if self.metric not in state.record:
            raise ValueError(
                f"EarlyStopping: no {self.metric!r} in the record; have: {', '.join(state.record)}"
            )
        value = state.record[self.metric]
        if value is None:
            return
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.bad_epochs = float(value), 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            state.should_stop = True
            state.stop_reason = (
                f"{self.metric} has not improved for {self.patience} epoch(s) (best {self.best:.4g})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])


def builtin_callbacks(cfg: TrainConfig, is_main: bool) -> list[Callback]:
    """The callbacks a configuration asks for (the noisy-label fit with label noise, the decomposition
    monitor, ``--tensorboard`` on the main process)."""
    callbacks: list[Callback] = [NoisyLabelFit()] if cfg.label_noise > 0 else []
    if cfg.full_gradient == "oracle" or cfg.decomposition:
        callbacks.append(DecompositionCallback())
    if cfg.tensorboard and is_main:
        callbacks.append(TensorBoardCallback())
    return callbacks
