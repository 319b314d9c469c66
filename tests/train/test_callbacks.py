"""The callback contract through the real trainer: one hook signature, a stop flag (early stopping), the
callbacks' state saved with the run and restored on resume, on_exception and a teardown that always runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from friendly_sam.train import Callback, EarlyStopping, TensorBoardCallback, TrainConfig, TrainState, train
from friendly_sam.train import run_dir as rd
from friendly_sam.train.callbacks import CallbackList

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="real Fashion-MNIST not installed")
QUIET: dict[str, Any] = {"progress": False, "log": lambda message: None}


def tiny(**overrides: Any) -> TrainConfig:
    values = dict(
        dataset="fashion-mnist", data_dir=str(FASHION_DIR), model="cnn_small", epochs=4, train_subset=256,
        val_size=128, test_subset=128, batch_size=64, threads=1, device="cpu", method="base",
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides}).validate()


class StepCounter(Callback):
    """Counts the steps of the whole run: its count must survive a resume."""

    def __init__(self) -> None:
        self.steps = 0

    def after_step(self, state: TrainState) -> None:
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]


class InterruptIn(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def before_step(self, state: TrainState) -> None:
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


@needs_data
def test_early_stopping_ends_the_run_with_a_checkpoint_and_a_finished_summary(tmp_path):
    run = tmp_path / "run"
    # min_delta no loss can beat: the first epoch sets the best, the next one is "no improvement"
    stop = EarlyStopping("val_loss", patience=1, min_delta=1e9)
    summary = train(tiny(), run, callbacks=[stop], **QUIET)
    assert [m["epoch"] for m in rd.read_metrics(run)] == [1, 2]
    assert summary["stopped_early"]["after_epoch"] == 2 and "val_loss" in summary["stopped_early"]["reason"]
    assert rd.read_summary(run)["stopped_early"] == summary["stopped_early"]
    ckpt = rd.read_checkpoint(run)
    assert ckpt["epoch"] == 2 and ckpt["callbacks"]["EarlyStopping"]["bad_epochs"] == 1
    logs: list[str] = []
    again = train(tiny(), run, resume=True, progress=False, log=logs.append, callbacks=[EarlyStopping()])
    assert again == summary and any("already finished (stopped early" in line for line in logs)


@needs_data
def test_callback_state_is_saved_and_restored_across_a_resume(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    counter = StepCounter()
    train(tiny(), whole, callbacks=[counter], **QUIET)
    assert counter.steps == 4 * 2  # 128 training images / 64, 4 epochs
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), cut, callbacks=[StepCounter(), InterruptIn(2)], **QUIET)
    assert rd.read_checkpoint(cut)["callbacks"] == {"StepCounter": {"steps": 4}}
    resumed = StepCounter()
    train(tiny(), cut, resume=True, callbacks=[resumed], **QUIET)
    assert resumed.steps == counter.steps
    a, b = rd.read_checkpoint(whole)["model"], rd.read_checkpoint(cut)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # callbacks do not change the trajectory


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_exception(self, state: TrainState) -> None:
        self.calls.append(f"exception {type(state.exception).__name__}")

    def teardown(self, state: TrainState) -> None:
        self.calls.append("teardown")


class Fails(Callback):
    def after_step(self, state: TrainState) -> None:
        if state.step == 1:
            raise RuntimeError("a callback bug")

    def teardown(self, state: TrainState) -> None:
        raise OSError("teardown of this one fails too")


class FakeWriter:
    opened: list[FakeWriter] = []

    def __init__(self, path: str) -> None:
        self.closed = False
        FakeWriter.opened.append(self)

    def add_scalar(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@needs_data
def test_a_failing_run_calls_on_exception_and_tears_every_callback_down(tmp_path, monkeypatch):
    monkeypatch.setattr("friendly_sam.train.callbacks.require_tensorboard", lambda: FakeWriter)
    board, rec = TensorBoardCallback(), Recorder()
    with pytest.raises(RuntimeError, match="a callback bug"):
        train(tiny(), tmp_path / "run", callbacks=[board, Fails(), rec], **QUIET)
    assert rec.calls == ["exception RuntimeError", "teardown"]  # after the failing teardown too
    assert FakeWriter.opened[-1].closed and board.writer is None  # the TensorBoard writer is closed


def test_two_callbacks_with_state_need_their_own_keys():
    with pytest.raises(ValueError, match="share the key 'StepCounter'"):
        CallbackList([StepCounter(), StepCounter()])
    CallbackList([Recorder(), Recorder()])  # without state: fine


def test_early_stopping_counts_and_refuses_bad_arguments():
    stop = EarlyStopping("val_acc", patience=2, mode="max")
    state: Any = type("S", (), {"should_stop": False, "stop_reason": "", "record": {}})()
    for acc in (50.0, 60.0, None, 59.0, 60.0):
        state.record = {"val_acc": acc}
        stop.on_epoch_end(state)
    assert stop.best == 60.0 and stop.bad_epochs == 2 and state.should_stop
    with pytest.raises(ValueError, match="no 'val_loss' in the record"):
        EarlyStopping().on_epoch_end(state)
    with pytest.raises(ValueError, match="mode="):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience="):
        EarlyStopping(patience=0)
