"""The trainer's loop makes no host synchronisation between read points (train/metrics.py): counted with a
TorchDispatchMode over a real `train()` run, with a capturable two-pass optimizer built by build_optimizer
(the optimizer the trainer builds on CUDA) and with plain SGD."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from testkit import SyncCounter

from friendly_sam.data import TensorBatchLoader
from friendly_sam.train import Callback, TrainConfig, build_optimizer, setup, train
from friendly_sam.train import metrics as train_metrics
from friendly_sam.train.metrics import EpochMetrics

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class SyncsPerStep(Callback):
    """The counter's value at every step's start: the difference is what step i (and its read) cost."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter, self.marks = counter, []

    def before_step(self, state: Any) -> None:
        self.marks.append(self.counter.count)


def syncs_per_step(tmp_path: Path, method: str, progress: bool) -> tuple[list[int], int]:
    cfg = TrainConfig(
        dataset="fashion-mnist",
        data_dir=str(FASHION_DIR),
        model="cnn_small",
        epochs=1,
        train_subset=448,  # 28 steps of 16: reads after steps 20 and 28
        test_subset=64,
        batch_size=16,
        threads=1,
        device="cpu",
        method=method,
    ).validate()
    counter = SyncCounter()
    recorder = SyncsPerStep(counter)
    with counter:
        train(
            cfg,
            tmp_path / method,
            progress=progress,
            log=lambda m: None,
            optimizer_factory=lambda c, m: build_optimizer(c, m, capturable=method != "base"),
            callbacks=[recorder],
        )
    marks = recorder.marks
    return [b - a for a, b in zip(marks, marks[1:])], len(marks)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="real Fashion-MNIST not installed")
@pytest.mark.parametrize("method,progress", [("fsam", True), ("sam", False), ("base", True)])
def test_no_host_sync_between_read_points(tmp_path: Path, method: str, progress: bool) -> None:
    per_step, steps = syncs_per_step(tmp_path, method, progress)
    assert steps == 28
    reads = [i for i in range(steps - 1) if EpochMetrics.is_read_point(i, steps)]
    assert reads == [train_metrics.READ_EVERY - 1]
    for i, n in enumerate(per_step):
        if i in reads:
            assert n > 0, "the read point reads the device sums (the counter sees syncs)"
        else:
            assert n == 0, f"step {i} made {n} host synchronisation(s)"


def test_epoch_metrics_read_equals_eager_sums() -> None:
    torch.manual_seed(0)
    metrics = EpochMetrics(torch.device("cpu"))
    loss_sum, correct = 0.0, 0
    for _ in range(5):
        logits, y = torch.randn(7, 4), torch.randint(0, 4, (9,))
        loss = torch.rand(()) * 3
        metrics.add(loss, logits, y)
        loss_sum = float(torch.tensor(loss_sum, dtype=torch.float32) + loss.float() * 7)
        correct += int((logits.argmax(1) == y[:7]).sum())
    assert metrics.read() == (loss_sum, correct)
    assert (metrics.scored, metrics.seen) == (35, 45)
    assert [EpochMetrics.is_read_point(i, 45) for i in (18, 19, 20, 39, 44)] == [
        False,
        True,
        False,
        True,
        True,
    ]


def test_build_optimizer_chooses_capturable_on_cuda_only() -> None:
    cfg = TrainConfig(dataset="fashion-mnist", model="cnn_small", method="fsam").validate()
    model = torch.nn.Linear(3, 2)
    assert not build_optimizer(cfg, model).capturable  # CPU: the default mode and its immediate errors
    assert build_optimizer(cfg, model, capturable=True).capturable

    class OnCuda(torch.nn.Module):  # what _capturable_fits looks at: where the parameters live
        def parameters(self, recurse: bool = True) -> Any:
            return iter([SimpleNamespace(is_cuda=True)])

    assert setup._capturable_fits(cfg, OnCuda())
    for options in ({"perturb_every": 2}, {"component": "full"}, {"decomposition": True}):
        host = TrainConfig(dataset="fashion-mnist", model="cnn_small", method="fsam", **options)
        assert not setup._capturable_fits(host, OnCuda()), options


def test_device_resident_loader_moves_the_order_once_per_epoch() -> None:
    """Images held on another device (meta here: shapes only, the same code path as a GPU) are indexed there
    with the epoch's order moved once, sliced per batch (no host copy per batch)."""
    images = torch.zeros(10, 1, 4, 4, dtype=torch.uint8, device="meta")
    labels = torch.zeros(10, dtype=torch.int64, device="meta")
    loader = TensorBatchLoader(images, labels, 4, shuffle=True, seed=3)
    batches = list(loader.iter_from(0, epoch=0))
    assert [len(y) for _, y in batches] == [4, 4, 2] and all(x.device.type == "meta" for x, _ in batches)
    moved = loader._device_perm[1]
    list(loader.iter_from(1, epoch=0))
    assert loader._device_perm[1] is moved  # the same epoch: not moved again
    list(loader.iter_from(0, epoch=1))
    assert loader._device_perm[0][1] == 1 and loader._device_perm[1] is not moved
