"""``fsam demo``: SGD, SAM and F-SAM on real Fashion-MNIST with the same model, budget and seed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..train import TrainConfig, train
from ..train import run_dir as rd
from .compare import compare_runs

DEMO_CONFIG: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "model": "resnet8",
    "epochs": 4,
    "batch_size": 128,
    "lr": 0.05,
    "weight_decay": 5e-4,
    "rho": 0.1,
    "lmbda": 0.6,
    "sigma": 1.0,
    "train_subset": 20000,
    "bf16": False,
    "channels_last": False,
    "seed": 0,
}
DEMO_OPTIMIZERS = ("sgd", "sam", "fsam")


def run_demo(
    out: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[str, Path | None]:
    """Train (or reuse, or resume) one run per optimizer under ``out``; return the comparison table and plot.

    ``overrides``: TrainConfig fields replacing :data:`DEMO_CONFIG`'s (e.g. ``epochs``, ``train_subset``)."""
    runs = []
    for name in DEMO_OPTIMIZERS:
        cfg = TrainConfig.from_dict({**DEMO_CONFIG, **(overrides or {}), "optimizer": name}).validate()
        run_dir = out / name
        runs.append(run_dir)
        if rd.has_summary(run_dir):
            log(f"{name}: finished earlier, reusing {run_dir}")
            continue
        log(f"== {name}: {cfg.model} on {cfg.dataset}, {cfg.epochs} epochs, rho {cfg.rho} ==")
        train(cfg, run_dir, resume=rd.has_checkpoint(run_dir), progress=progress, log=log)
    return compare_runs(runs, plot_path=out / "test_accuracy.png")
