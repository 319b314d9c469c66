"""The matrix's ``fsam train`` row: the trainer behind the CLI (``friendly_sam.train.train``, in process) on
a tiny real Fashion-MNIST run, against the same trainer driven by the hand-written reference step
(``step_fn=``): same data, order, augmentation and seeds, so the final checkpoints must agree. Needs the
real data set (/usr/share/datasets/fashion-mnist); without it the row is left out."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from matrix_entries import Entry
from matrix_setup import CLIP, Features
from testkit import FASHION_DIR
from torch import Tensor, nn

from friendly_sam import frozen_bn_stats
from friendly_sam.train import TrainConfig, train
from friendly_sam.train import run_dir as rd

if not FASHION_DIR.is_dir():
    raise ImportError("real Fashion-MNIST not installed: the fsam train row is left out", name="fashion_mnist")


def _config(features: Features) -> TrainConfig:
    values: dict[str, Any] = dict(
        dataset="fashion-mnist",
        data_dir=str(FASHION_DIR),
        model="cnn_small",
        epochs=1,
        train_subset=192,  # 3 steps of 64
        val_size=64,
        test_subset=64,
        batch_size=64,
        threads=1,
        device="cpu",
        method="fsam",
        schedule="constant",
        perturb_every=features.perturb_every,
        ascent_fraction=features.ascent_fraction,
        bf16=features.precision == "bf16",
        max_grad_norm=CLIP if features.clip else None,
    )
    return TrainConfig(**values).validate()


def hand_step(
    model: nn.Module, optimizer: Any, x: Tensor, y: Tensor, *, bf16: bool, max_grad_norm: float | None,
    ascent_fraction: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The reference update (the trainer gives the clip to the optimizer's own max_grad_norm)."""
    xa, ya = x, y
    if optimizer.next_step_perturbs and ascent_fraction < 1:
        n = max(1, math.ceil(ascent_fraction * len(y)))
        xa, ya = x[:n], y[:n]
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with amp:
        logits = model(xa)
        loss = nn.functional.cross_entropy(logits, ya)
    loss.backward()
    optimizer.first_step()
    if optimizer.is_perturbed:
        with frozen_bn_stats(model), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            perturbed = nn.functional.cross_entropy(model(x), y)
        perturbed.backward()
    optimizer.second_step()
    return loss.detach(), logits.detach()


def _trained(features: Features, step_fn: Any = None) -> dict[str, Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train(_config(features), run, progress=False, log=lambda m: None, step_fn=step_fn)
        return rd.read_checkpoint(run)["model"]


def _no_such_option(features: Features) -> str | None:
    if features.accumulate > 1:
        return "no such option: the fsam trainer has no gradient accumulation"
    if features.precision == "16":
        return "no such option: fsam train has --bf16, no fp16 loss scaling"
    if features.random:
        return "no such option: fsam train has no rng option (augmentation is drawn with the data, once per batch)"
    if features.resume:
        return "no such option: fsam train checkpoints at epoch ends (exact resume there: tests/train)"
    return None


ENTRIES = [
    Entry(
        "fsam train (the trainer)",
        lambda f: _trained(f),
        has=_no_such_option,
        expected=lambda f: _trained(f, step_fn=hand_step),
        ddp_note="not run here: fsam train under torchrun (per-replica by default) is tested in tests/distributed",
    )
]
