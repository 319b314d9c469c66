"""The oracle full gradient and the EMA-vs-full-gradient diagnostics of a training loop."""

from __future__ import annotations

import json

import pytest
import torch
from testkit import FASHION_DIR, needs_fashion_mnist
from torch import nn

from friendly_sam import FriendlySAM, frozen_bn_stats
from friendly_sam.analysis.decomposition import cosine, full_batch_gradient
from friendly_sam.data import BatchAugment, TensorBatchLoader
from friendly_sam.models import build_model
from friendly_sam.train import run_dir as rd
from friendly_sam.train.decomposition import DecompositionMonitor


def tiny_data(n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 12, 12), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return images, labels


def sam_step(model, opt, x, y):
    nn.functional.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.first_step()
    perturbed = [p.detach().clone() for p in model.parameters()]
    with frozen_bn_stats(model):
        nn.functional.cross_entropy(model(x), y).backward()
    opt.second_step()
    return before, perturbed


def test_one_batch_oracle_applies_no_perturbation_even_with_augmentation():
    images, labels = tiny_data()
    augment = BatchAugment(crop_padding=2, flip=True, mean=(0.5,), std=(0.25,))  # random per epoch
    loader = TensorBatchLoader(images, labels, 32, shuffle=True, augment=augment, seed=3)  # one batch
    torch.manual_seed(0)
    model = build_model("cnn_small", 10, 1)  # BatchNorm: train-mode batch statistics everywhere
    opt = FriendlySAM(
        model.parameters(), torch.optim.SGD, rho=0.5, lr=0.05, momentum=0.9, track_diagnostics=True
    )
    monitor = DecompositionMonitor(model, opt, loader, oracle_every=1)
    running = model.features[1].running_mean.clone()
    step = 0
    for epoch in range(3):
        loader.set_epoch(epoch)
        for x, y in loader:
            monitor.before_step(step, epoch)
            if step == 0:  # the oracle pass leaves the BatchNorm running statistics alone
                assert torch.equal(model.features[1].running_mean, running)
            before, perturbed = sam_step(model, opt, x, y)
            assert all(torch.equal(a, b) for a, b in zip(before, perturbed)), "perturbation applied"
            assert all(torch.isfinite(p).all() for p in model.parameters())
            step += 1
    diag = opt.read_diagnostics()
    assert diag["steps"] == 3 and diag["noise_ratio"] == 0.0
    assert diag["cos_g_m"] == pytest.approx(1.0, abs=1e-6)
    assert monitor.epoch_record()["oracle_passes"] == 3


def test_oracle_is_the_mean_of_the_epochs_batch_gradients():
    images, labels = tiny_data(n=40)
    loader = TensorBatchLoader(images, labels, 16, shuffle=True, seed=1)  # batches of 16, 16, 8
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    full = full_batch_gradient(model, loader.iter_from(0, 2))
    parts = []
    for x, y in loader.iter_from(0, 2):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        parts.append([p.grad.clone() * len(y) / 40 for p in model.parameters()])
    for i, f in enumerate(full):
        torch.testing.assert_close(f, sum(part[i] for part in parts), atol=1e-6, rtol=1e-5)
    assert all(p.grad is not None for p in model.parameters())  # untouched by full_batch_gradient


def test_ema_cosine_diagnostic_on_a_constructed_case():
    # lr = 0 and one clean batch: every minibatch gradient equals the full gradient of the fixed subset,
    # so the EMA, the gradient and the full gradient are parallel: cosines 1, noise ratio 0.
    images, labels = tiny_data()
    loader = TensorBatchLoader(images, labels, 32, shuffle=True, seed=0)
    xs, ys = next(iter(TensorBatchLoader(images, labels, 32)))
    torch.manual_seed(0)
    model = build_model("cnn_small", 10, 1)
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.0, track_diagnostics=True)
    monitor = DecompositionMonitor(
        model, opt, loader, diagnostics=True, diagnostics_every=2, subset=(xs, ys), batch_size=32
    )
    for step in range(5):
        monitor.before_step(step, 0)
        x, y = loader.batch(0, epoch=0)
        sam_step(model, opt, x, y)
    rec = monitor.epoch_record()
    assert [s for s, _ in rec["diag_ema_full_cos_points"]] == [2, 4]  # step 0 has no EMA yet
    assert rec["diag_ema_full_cos"] == pytest.approx(1.0, abs=1e-5)
    assert rec["diag_batch_full_cos"] == pytest.approx(1.0, abs=1e-5)
    assert [s for s, _ in rec["diag_batch_full_cos_points"]] == [2, 4]
    assert rec["diag_cos_g_m"] == pytest.approx(1.0, abs=1e-5)
    assert rec["diag_noise_ratio"] == pytest.approx(0.0, abs=1e-3)
    assert rec["diag_steps"] == 4
    assert cosine([torch.ones(2)], [torch.zeros(2)]) == 0.0


def test_monitor_refuses_plain_optimizers():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="FriendlySAM"):
        DecompositionMonitor(model, torch.optim.SGD(model.parameters(), lr=0.1), None, oracle_every=1)


def test_config_validation():
    from friendly_sam.train import TrainConfig

    with pytest.raises(ValueError, match="--method fsam or afsam"):
        TrainConfig(method="sam", component="full").validate()
    with pytest.raises(ValueError, match="--component"):
        TrainConfig(component="oracle").validate()
    with pytest.raises(ValueError, match="--full-gradient"):
        TrainConfig(full_gradient="exact").validate()
    with pytest.raises(ValueError, match="--oracle-every"):
        TrainConfig(oracle_every=0).validate()


@needs_fashion_mnist
def test_trainer_one_batch_oracle_run_equals_sgd(tmp_path):
    """Real data, one batch of 64 with random crops: F-SAM with the oracle perturbs by exactly 0, so
    its run is bit-identical to plain SGD; the diagnostics land in metrics.jsonl."""
    from friendly_sam.train import TrainConfig, train

    base = {
        "data_dir": str(FASHION_DIR),
        "model": "cnn_small",
        "train_subset": 64,
        "batch_size": 64,
        "epochs": 2,
        "test_subset": 100,
        "threads": 1,
        "crop": True,
        "rho": 0.5,
    }
    oracle = TrainConfig(
        **base,
        method="fsam",
        full_gradient="oracle",
        oracle_every=1,
        decomposition=True,
        decomposition_every=1,
        decomposition_subset=64,
    )
    train(oracle, tmp_path / "oracle", progress=False, log=lambda s: None)
    train(TrainConfig(**base, method="base"), tmp_path / "sgd", progress=False, log=lambda s: None)
    a = rd.read_checkpoint(tmp_path / "oracle")["model"]
    b = rd.read_checkpoint(tmp_path / "sgd")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(line) for line in (tmp_path / "oracle" / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        assert m["diag_noise_ratio"] == 0.0 and m["diag_cos_g_m"] == pytest.approx(1.0, abs=1e-6)
        assert m["oracle_passes"] == 1 and m["diag_steps"] == 1  # the oracle exists from step 0 on
        assert m["diag_ema_oracle_cos"] is None or -1.0 <= m["diag_ema_oracle_cos"] <= 1.0
