"""Efficient F-SAM in the training loop: sub-batch ascent (training_step's ascent_fraction), periodic
perturbation through the trainer (config fields, resume mid-period) and the CLI flags, as a user runs them."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from testkit import FASHION_DIR, needs_fashion_mnist
from torch import nn

from friendly_sam import FriendlySAM, frozen_bn_stats
from friendly_sam.models import build_model
from friendly_sam.train import TrainConfig, train, training_step
from friendly_sam.train import run_dir as rd

KW = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def model_and_batch(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model("cnn_small", 10, 1)
    gen = torch.Generator().manual_seed(seed + 1)
    return model, torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen)


def flat(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]


def test_ascent_fraction_one_is_the_ordinary_step_bit_for_bit() -> None:
    a, x, y = model_and_batch()
    b = copy.deepcopy(a)
    opt_a = FriendlySAM(a.parameters(), rho=0.2, **KW)
    opt_b = FriendlySAM(b.parameters(), rho=0.2, **KW)
    for _ in range(3):
        training_step(a, opt_a, x, y)
        training_step(b, opt_b, x, y, ascent_fraction=1.0)
    assert all(torch.equal(p, q) for p, q in zip(flat(a), flat(b)))


def test_sub_batch_ascent_uses_the_first_samples_for_the_clean_pass_and_all_for_the_perturbed() -> None:
    model, x, y = model_and_batch()
    ref = copy.deepcopy(model)
    opt = FriendlySAM(model.parameters(), rho=0.2, **KW)
    ref_opt = FriendlySAM(ref.parameters(), rho=0.2, **KW)
    loss, logits = training_step(model, opt, x, y, ascent_fraction=0.25)
    assert logits.shape[0] == 4  # ceil(0.25 * 16): the clean pass's samples are what is reported
    # the same step written out: clean pass on x[:4] (BatchNorm statistics from it), perturbed on all of x
    ref_loss = nn.functional.cross_entropy(ref(x[:4]), y[:4])
    ref_loss.backward()
    g = [p.grad.clone() for p in ref.parameters()]
    ref_opt.first_step()
    with frozen_bn_stats(ref):
        nn.functional.cross_entropy(ref(x), y).backward()
    ref_opt.second_step()
    assert torch.equal(loss, ref_loss.detach())
    assert all(torch.equal(p, q) for p, q in zip(flat(model), flat(ref)))
    # F-SAM's first step sets m = g: the EMA holds the SUB-batch gradient
    for p, gi in zip(model.parameters(), g):
        assert torch.equal(opt.state[p]["ema"], gi)


def test_unperturbed_steps_use_the_whole_batch_even_with_sub_batch_ascent() -> None:
    model, x, y = model_and_batch()
    opt = FriendlySAM(model.parameters(), rho=0.2, perturb_every=2, **KW)
    sizes = [training_step(model, opt, x, y, ascent_fraction=0.5)[1].shape[0] for _ in range(4)]
    assert sizes == [8, 16, 8, 16]
    assert opt.steps_taken == 4


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_invalid_ascent_fraction_is_refused(fraction: float) -> None:
    model, x, y = model_and_batch()
    opt = FriendlySAM(model.parameters(), rho=0.2, **KW)
    with pytest.raises(ValueError, match="ascent_fraction"):
        training_step(model, opt, x, y, ascent_fraction=fraction)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"perturb_every": 0}, "--perturb-every"),
        ({"between": "skip"}, "--between"),
        ({"ascent_fraction": 0.0}, "--ascent-fraction"),
        ({"ascent_fraction": 1.5}, "--ascent-fraction"),
        ({"method": "base", "perturb_every": 2}, "not to --method base"),
    ],
)
def test_config_refuses_invalid_values(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**overrides).validate()


def tiny(**overrides: Any) -> TrainConfig:
    values = dict(
        dataset="fashion-mnist",
        data_dir=str(FASHION_DIR),
        model="cnn_small",
        epochs=2,
        train_subset=320,  # 3 steps of 64 per epoch: with perturb_every=4 an epoch ends mid-period
        val_size=128,
        test_subset=64,
        batch_size=64,
        threads=1,
        device="cpu",
        method="fsam",
        perturb_every=4,
        between="looksam",
        ascent_fraction=0.5,
        schedule="constant",  # stopping after epoch 1 then resuming to 2 keeps the same schedule
    )
    return TrainConfig(**{**values, **overrides}).validate()


@needs_fashion_mnist
def test_trainer_resume_mid_period_is_bit_exact(tmp_path: Path) -> None:
    straight = train(tiny(), tmp_path / "straight", progress=False, log=lambda m: None)
    train(tiny(epochs=1), tmp_path / "resumed", progress=False, log=lambda m: None)
    resumed = train(tiny(), tmp_path / "resumed", resume=True, progress=False, log=lambda m: None)
    assert resumed["final_test_acc"] == straight["final_test_acc"]
    a = rd.read_checkpoint(tmp_path / "straight")
    b = rd.read_checkpoint(tmp_path / "resumed")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["two_pass"]["steps"] == b["optimizer"]["two_pass"]["steps"] == 6
    metrics = rd.read_metrics(tmp_path / "straight")
    assert all(0.0 <= m["train_acc"] <= 100.0 for m in metrics)


@pytest.mark.slow
@needs_fashion_mnist
def test_cli_flags_train_the_variant(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--method", "sam", "--perturb-every", "3", "--between", "looksam", "--looksam-alpha", "0.5"]
    args += [
        "--ascent-fraction",
        "0.5",
        "--model",
        "cnn_small",
        "--train-subset",
        "256",
        "--batch-size",
        "64",
    ]
    args += [
        "--epochs",
        "1",
        "--test-subset",
        "200",
        "--threads",
        "1",
        "--quiet",
        "--data-dir",
        str(FASHION_DIR),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "friendly_sam.cli", "train", *args, "--out", str(run)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    assert (config["perturb_every"], config["between"], config["looksam_alpha"]) == (3, "looksam", 0.5)
    assert config["ascent_fraction"] == 0.5
    bad = subprocess.run(
        [sys.executable, "-m", "friendly_sam.cli", "train", "--method", "base", "--perturb-every", "2"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "not to --method base" in bad.stderr
    assert "Traceback" not in bad.stderr
