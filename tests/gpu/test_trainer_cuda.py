"""`fsam train`'s loop on a CUDA device makes no host synchronisation between read points (run on a GPU
machine; the same loop is counted on the CPU by tests/train/test_device_metrics.py). torch's sync debug mode
warns on every synchronising CUDA call, blocking host-to-device copies included."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from friendly_sam.train import Callback, TrainConfig, TrainState, train
from friendly_sam.train.metrics import EpochMetrics

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)"
)


class SyncWarningsPerStep(Callback):
    def __init__(self, caught: list[warnings.WarningMessage]) -> None:
        self.caught, self.marks = caught, []

    def on_train_start(self, state: TrainState) -> None:
        torch.cuda.set_sync_debug_mode("warn")  # after the set-up (its copies are not per step)

    def before_step(self, state: TrainState) -> None:
        self.marks.append(sum("synchroniz" in str(w.message) for w in self.caught))

    def on_epoch_record(self, state: TrainState) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="real Fashion-MNIST not installed")
@pytest.mark.parametrize("method", ["fsam", "base"])
def test_trainer_loop_has_no_sync_between_read_points(tmp_path: Path, method: str) -> None:
    cfg = TrainConfig(
        dataset="fashion-mnist",
        data_dir=str(FASHION_DIR),
        model="resnet20",
        epochs=1,
        train_subset=896,  # 28 steps of 32 (crop, flip and Cutout on: their parameters are copied every step)
        test_subset=64,
        batch_size=32,
        device="cuda",
        method=method,
        cutout=True,
    ).validate()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recorder = SyncWarningsPerStep(caught)
        try:
            train(cfg, tmp_path / method, progress=False, log=lambda m: None, callbacks=[recorder])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    per_step = [b - a for a, b in zip(recorder.marks, recorder.marks[1:])]
    reads = [i for i in range(len(per_step)) if EpochMetrics.is_read_point(i, len(recorder.marks))]
    assert len(recorder.marks) == 28 and reads == [19]
    assert all(n == 0 for i, n in enumerate(per_step) if i not in reads), per_step
    assert per_step[19] > 0  # the read point's sync is seen: the check can fail
