"""What a run is made of, built from its configuration: the data, the optimizer, the learning-rate
schedule, and evaluation of a split.

:func:`prepare_data` is also how ``fsam analyze`` rebuilds the training data a run saw."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..data import BatchAugment, TensorBatchLoader, apply_label_noise, load_dataset, subset, train_val_split
from ..optim import SAM, FriendlySAM
from .config import TrainConfig
from .step import autocast_context

OptimizerFactory = Callable[[TrainConfig, nn.Module], torch.optim.Optimizer]


@dataclass
class RunData:
    """Everything the loop needs from the data set, prepared once."""

    train_loader: TensorBatchLoader
    eval_sets: dict[str, tuple[Tensor, Tensor]]  # "val" (optional) and "test"
    eval_transform: BatchAugment
    num_classes: int
    in_channels: int
    noisy_indices: Tensor | None
    noisy_labels: Tensor | None


def prepare_data(cfg: TrainConfig, device: torch.device, shard: tuple[int, int] = (0, 1)) -> RunData:
    ds = load_dataset(cfg.dataset, root=cfg.data_dir, download=cfg.download)
    images, labels = ds.train_images, ds.train_labels
    eval_sets: dict[str, tuple[Tensor, Tensor]] = {}
    if cfg.train_subset is not None:
        if cfg.train_subset > len(labels):
            raise ValueError(f"--train-subset {cfg.train_subset} exceeds the {len(labels)} training images")
        images, labels = subset(images, labels, cfg.train_subset, seed=cfg.seed)
    if cfg.val_size:
        if cfg.val_size >= len(labels):
            raise ValueError(f"--val-size {cfg.val_size} leaves no training images (have {len(labels)})")
        split = train_val_split(images, labels, cfg.val_size, seed=cfg.seed)
        images, labels = split.train_images, split.train_labels
        eval_sets["val"] = (split.val_images, split.val_labels)  # clean labels: selection is honest
    test_images, test_labels = ds.test_images, ds.test_labels
    if cfg.test_subset is not None and cfg.test_subset < len(test_labels):
        test_images, test_labels = subset(test_images, test_labels, cfg.test_subset, seed=0)
    eval_sets["test"] = (test_images, test_labels)
    noisy_indices = noisy_labels = None
    if cfg.label_noise > 0:
        labels, noisy_indices = apply_label_noise(
            labels, ds.num_classes, cfg.label_noise, cfg.noise_kind, seed=cfg.seed, dataset=ds.name
        )
        noisy_labels = labels[noisy_indices]
    small = ds.image_size <= 28
    flip = cfg.flip if cfg.flip is not None else ds.name.startswith("cifar")
    augment = BatchAugment(
        crop_padding=(3 if small else 4) if cfg.crop else 0,
        flip=flip,
        cutout_size=(8 if small else 16) if cfg.cutout else 0,
        cutout_p=0.5,
        mean=ds.mean,
        std=ds.std,
    )
    loader = TensorBatchLoader(
        images,
        labels,
        cfg.batch_size,
        shuffle=True,
        drop_last=False,
        augment=augment,
        seed=cfg.seed,
        device=device,
        shard=shard,  # data-parallel: this rank's part of every global batch
    )
    return RunData(
        loader,
        eval_sets,
        BatchAugment(mean=ds.mean, std=ds.std),
        ds.num_classes,
        ds.in_channels,
        noisy_indices,
        noisy_labels,
    )


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``sgd`` is the base optimizer alone; the others wrap it."""
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
    if cfg.optimizer == "sgd":
        return base_cls(params, **base_kw)
    common = {
        "rho": cfg.rho,
        "max_grad_norm": cfg.max_grad_norm,
        "perturb_every": cfg.perturb_every,
        "between": cfg.between,
        "looksam_alpha": cfg.looksam_alpha,
        **base_kw,
    }
    if cfg.optimizer in ("sam", "asam"):
        return SAM(params, base_cls, adaptive=cfg.optimizer == "asam", **common)
    return FriendlySAM(
        params,
        base_cls,
        sigma=cfg.sigma,
        lmbda=cfg.lmbda,
        adaptive=cfg.optimizer == "afsam",
        component=cfg.component,
        track_diagnostics=cfg.diagnostics,
        **common,
    )


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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    transform: BatchAugment,
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), cfg.eval_batch_size):
        x = transform(images[start : start + cfg.eval_batch_size].to(device))
        y = labels[start : start + cfg.eval_batch_size].to(device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, cfg.bf16):
            logits = model(x)
        total_loss += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return total_loss / len(labels), 100.0 * correct / len(labels)
