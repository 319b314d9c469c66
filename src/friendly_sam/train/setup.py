"""The optimizer of a run and its learning-rate schedule, built from the configuration.

(The data of a run: :mod:`.data_setup`; evaluation: :mod:`.evaluation`.)"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..optim import SAM, FriendlySAM
from .config import TrainConfig

__all__ = ["OptimizerFactory", "build_optimizer", "lr_factor"]

OptimizerFactory = Callable[[TrainConfig, nn.Module], torch.optim.Optimizer]


def build_optimizer(
    cfg: TrainConfig, model: nn.Module, *, capturable: bool | None = None
) -> torch.optim.Optimizer:
    """``--method base`` is the base optimizer (``--base``) alone; the other methods wrap it.

    ``capturable`` (two-pass methods): the step with no host synchronisation (docs/optimizer.md); default
    (None): on when the model is on a CUDA device and the options allow it (no periodic perturbation, no
    research options), so a GPU never waits for the host; off on the CPU, where a sync costs nothing.
    """
    if cfg.base == "sgd":
        base_cls: type[torch.optim.Optimizer] = torch.optim.SGD
        base_kw: dict[str, Any] = {
            "lr": cfg.lr,
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
            "nesterov": cfg.nesterov,
        }
    else:
        base_cls, base_kw = torch.optim.AdamW, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    params = model.parameters()
    if cfg.method == "base":
        return base_cls(params, **base_kw)
    common = {
        "rho": cfg.rho,
        "max_grad_norm": cfg.max_grad_norm,
        "perturb_every": cfg.perturb_every,
        "between": cfg.between,
        "looksam_alpha": cfg.looksam_alpha,
        **base_kw,
    }
    if capturable is None:
        capturable = _capturable_fits(cfg, model)
    if capturable:
        common["capturable"] = True
    if cfg.method in ("sam", "asam"):
        return SAM(params, base_cls, adaptive=cfg.method == "asam", **common)
    return FriendlySAM(
        params,
        base_cls,
        sigma=cfg.sigma,
        lmbda=cfg.lmbda,
        adaptive=cfg.method == "afsam",
        component=cfg.component,
        track_diagnostics=cfg.decomposition,
        **common,
    )


def _capturable_fits(cfg: TrainConfig, model: nn.Module) -> bool:
    """On a CUDA model, unless an option decides on the host (periodic perturbation, research options)."""
    on_cuda = any(p.is_cuda for p in model.parameters())
    host_options = cfg.perturb_every != 1 or cfg.between != "base" or cfg.component == "full"
    return on_cuda and not host_options and cfg.full_gradient != "oracle" and not cfg.decomposition


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate multiplier per iteration: linear warm-up, then cosine to 0 / steps / constant."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    milestones = sorted(int(round(m * total)) for m in cfg.milestones)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "step":
            return cfg.gamma ** sum(step >= m for m in milestones)
        return 1.0

    return factor
