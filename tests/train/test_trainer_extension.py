"""The trainer's extension points (optimizer_factory, step_fn, callbacks), used the way docs/trainer.md shows,
on a tiny real Fashion-MNIST run. (The guide's own example runs as written in tests/test_docs_code.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from testkit import FASHION_DIR, tiny_config

from friendly_sam import SAM
from friendly_sam.train import Callback, TrainConfig, TrainState, build_optimizer, train, training_step
from friendly_sam.train import run_dir as rd

pytestmark = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="real Fashion-MNIST not installed")


def tiny(**overrides: Any) -> TrainConfig:
    """testkit's tiny run, larger: 3 SAM epochs of 3 steps, with a validation split."""
    run = dict(epochs=3, train_subset=384, val_size=128, test_subset=128, batch_size=128, method="sam")
    return tiny_config(**{**run, "device": "cpu", **overrides}).validate()


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.steps: list[tuple[int, int]] = []
        self.after: list[int] = []
        self.state: TrainState | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.calls.append("start")
        self.state = state

    def before_step(self, state: TrainState) -> None:
        self.steps.append((state.step, state.epoch))

    def after_step(self, state: TrainState) -> None:
        assert self.steps[-1] == (state.step, state.epoch) and state.loss is not None
        self.after.append(state.step)

    def on_epoch_record(self, state: TrainState) -> None:
        record = state.record
        self.calls.append(f"record{record['epoch']}")
        assert "val_acc" not in record  # the training part only
        record["extra"] = record["epoch"] * 10

    def before_evaluation(self, state: TrainState) -> None:
        assert state.splits == ["val", "test"]
        if state.record["epoch"] == 2:
            state.splits = ["val"]

    def on_epoch_end(self, state: TrainState) -> None:
        self.calls.append(f"end{state.record['epoch']}")
        assert rd.read_metrics(state.run_dir)[-1] == json.loads(json.dumps(state.record))

    def on_train_end(self, state: TrainState) -> None:
        self.calls.append("train_end")
        state.summary["note"] = "added by a callback"

    def teardown(self, state: TrainState) -> None:
        self.calls.append("teardown")


def test_callbacks_order_keys_and_skipped_splits(tmp_path: Path) -> None:
    rec = Recorder()
    summary = train(tiny(), tmp_path / "r", progress=False, log=lambda m: None, callbacks=[rec])
    assert rec.calls == [
        *("start", "record1", "end1", "record2", "end2", "record3", "end3", "train_end", "teardown")
    ]
    assert rec.steps == [(i, i // 2) for i in range(6)]  # 256 training images / 128: 2 steps per epoch
    assert rec.after == list(range(6))
    metrics = rd.read_metrics(tmp_path / "r")
    assert [m["extra"] for m in metrics] == [10, 20, 30]
    assert metrics[1]["test_acc"] is None and metrics[1]["test_loss"] is None  # null: not measured
    assert metrics[1]["val_acc"] is not None and metrics[2]["test_acc"] is not None
    assert rd.read_summary(tmp_path / "r")["note"] == summary["note"] == "added by a callback"


class DuckSAM(torch.optim.Optimizer):
    """Not a TwoPassOptimizer: an optimizer with first_step/second_step, like another library's SAM."""

    def __init__(self, inner: SAM) -> None:  # shares the wrapped optimizer's groups and state
        self.inner, self.calls = inner, []
        self.param_groups, self.state, self.defaults = inner.param_groups, inner.state, inner.defaults
        self._optimizer_step_pre_hooks: dict[int, Any] = {}
        self._optimizer_step_post_hooks: dict[int, Any] = {}

    def first_step(self, zero_grad: bool = False) -> None:
        self.calls.append("first")
        self.inner.first_step(zero_grad=zero_grad)

    def second_step(self, zero_grad: bool = False) -> None:
        self.calls.append("second")
        self.inner.second_step(zero_grad=zero_grad)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # it never sees our step()
def test_optimizer_factory_duck_typed_two_pass_gives_our_numbers(tmp_path: Path) -> None:
    """An optimizer with first_step/second_step (no subclass, no adapter) takes the same two passes:
    wrapping our SAM that way reproduces the plain run's metrics exactly."""
    ours = train(tiny(epochs=2), tmp_path / "ours", progress=False, log=lambda m: None)
    made: list[DuckSAM] = []

    def factory(cfg: TrainConfig, model: torch.nn.Module) -> Any:
        made.append(DuckSAM(build_optimizer(cfg, model)))
        return made[0]

    theirs = train(
        tiny(epochs=2), tmp_path / "duck", progress=False, log=lambda m: None, optimizer_factory=factory
    )
    assert made[0].calls[:4] == ["first", "second", "first", "second"]
    keys = ("train_loss", "train_acc", "val_acc", "test_acc", "lr")
    a, b = rd.read_metrics(tmp_path / "ours"), rd.read_metrics(tmp_path / "duck")
    assert [[m[k] for k in keys] for m in a] == [[m[k] for k in keys] for m in b]
    assert ours["final_test_acc"] == theirs["final_test_acc"]


def test_step_fn_replaces_the_step(tmp_path: Path) -> None:
    seen: list[int] = []

    def counting_step(model: Any, optimizer: Any, x: Any, y: Any, **kw: Any) -> Any:
        seen.append(len(y))
        return training_step(model, optimizer, x, y, **kw)

    train(
        tiny(epochs=1, method="base"),
        tmp_path / "s",
        progress=False,
        log=lambda m: None,
        step_fn=counting_step,
    )
    assert seen == [128, 128]
