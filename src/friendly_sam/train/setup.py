"""What a run is made of, built from its configuration: the data, the optimizer, the learning-rate
schedule, and evaluation of a split.

:func:`prepare_data` is also how ``fsam analyze`` rebuilds the training data a run saw."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ..data import (
    IMAGE_FOLDER,
    BatchAugment,
    BatchSchedule,
    ImageFolderData,
    TensorBatchLoader,
    apply_label_noise,
    load_dataset,
    load_image_folder,
    subset,
    train_val_split,
)
from ..distributed import DistributedContext
from ..files import check_memory
from ..models import model_in_channels
from ..optim import SAM, FriendlySAM
from .config import TrainConfig
from .step import autocast_context

OptimizerFactory = Callable[[TrainConfig, nn.Module], torch.optim.Optimizer]
Log = Callable[[str], None]


@dataclass
class RunData:
    """Everything the loop needs from the data set, prepared once.

    ``train_loader`` is a :class:`~friendly_sam.data.TensorBatchLoader` (``.images`` in memory) or, for an
    image folder streamed from disk, a :class:`~friendly_sam.data.StreamingBatchLoader` (no ``.images``).
    ``folder`` is the image folder (``--dataset imagefolder``), else ``None``."""

    train_loader: BatchSchedule
    # "val" and/or "test": raw images and labels (transformed by eval_transform), or a loader of ready
    # batches (image folders: centre-cropped and normalised, this rank's part of every batch)
    eval_sets: dict[str, tuple[Tensor, Tensor] | BatchSchedule]
    eval_transform: Callable[[Tensor], Tensor]
    num_classes: int
    in_channels: int
    noisy_indices: Tensor | None
    noisy_labels: Tensor | None
    folder: ImageFolderData | None = None


def prepare_data(
    cfg: TrainConfig, device: torch.device, shard: tuple[int, int] = (0, 1), log: Log | None = None
) -> RunData:
    """The data of a run: a built-in data set, or ``--dataset imagefolder`` (then ``log`` receives the
    folder's description and the skipped files)."""
    if cfg.dataset == IMAGE_FOLDER:
        return _prepare_folder(cfg, device, shard, log)
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
    if device.type == "cuda":  # an in-memory set lives on the GPU: one transfer, batches indexed there
        images, labels = images.to(device), labels.to(device)
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


def _load_folder(cfg: TrainConfig, log: Log | None) -> ImageFolderData:
    # Under torchrun every process of a machine holds its own copy: the budget is shared among them.
    per_machine = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    budget = None if cfg.memory_budget is None else int(cfg.memory_budget * (1 << 30)) // per_machine
    assert cfg.data_dir is not None  # validate() requires it
    side = cfg.resize_size or cfg.image_size
    check_memory(  # a batch as float32, with the copies augmentation makes: before any allocation
        cfg.batch_size * 3 * side * side * 4 * 3,
        f"a batch of {cfg.batch_size} images of up to 3x{side}x{side}",
        "lower --image-size (and --resize-size) or --batch-size",
    )
    return load_image_folder(
        cfg.data_dir,
        image_size=cfg.image_size,
        resize_size=cfg.resize_size,
        channels=model_in_channels(cfg.model),
        random_crop=cfg.crop,
        flip=True if cfg.flip is None else cfg.flip,
        storage=cfg.data_storage,
        memory_budget=budget,
        skip_bad_images=cfg.skip_bad_images,
        num_workers=cfg.num_workers,
        log=log,
    )


def _folder_splits(cfg: TrainConfig, data: ImageFolderData) -> tuple[ImageFolderData, Tensor | None]:
    """Subsets, the validation split and label noise, as index selections (the same on both paths)."""
    n = len(data.splits["train"])
    if cfg.train_subset is not None:
        if cfg.train_subset > n:
            raise ValueError(f"--train-subset {cfg.train_subset} exceeds the {n} training images")
        chosen, _ = subset(torch.arange(n), data.splits["train"].labels, cfg.train_subset, seed=cfg.seed)
        data, n = data.take("train", chosen), cfg.train_subset
    if cfg.val_size:
        if "val" in data.splits:
            raise ValueError(f"--val-size: {data.root} has a val/ folder already; drop --val-size")
        if cfg.val_size >= n:
            raise ValueError(f"--val-size {cfg.val_size} leaves no training images (have {n})")
        s = train_val_split(torch.arange(n), data.splits["train"].labels, cfg.val_size, seed=cfg.seed)
        data = data.take("train", s.val_images, into="val").take("train", s.train_images)
        n -= cfg.val_size
    test = data.splits.get("test")
    if test is not None and cfg.test_subset is not None and cfg.test_subset < len(test):
        data = data.take("test", subset(torch.arange(len(test)), test.labels, cfg.test_subset, seed=0)[0])
    noisy_indices = None
    if cfg.label_noise > 0:
        labels, noisy_indices = apply_label_noise(
            data.splits["train"].labels, data.num_classes, cfg.label_noise, cfg.noise_kind, seed=cfg.seed
        )
        data = data.take("train", torch.arange(n), labels=labels)
    return data, noisy_indices


def _prepare_folder(
    cfg: TrainConfig, device: torch.device, shard: tuple[int, int], log: Log | None
) -> RunData:
    data, noisy_indices = _folder_splits(cfg, _load_folder(cfg, log))
    train_loader = data.loader("train", cfg.batch_size, train=True, seed=cfg.seed, device=device, shard=shard)
    # evaluation: loaders of ready batches, each rank its part (a folder without test/ evaluates val only)
    eval_sets: dict[str, tuple[Tensor, Tensor] | BatchSchedule] = {
        name: data.loader(name, cfg.eval_batch_size, device=device, shard=shard)
        for name in ("val", "test")
        if name in data.splits
    }
    noisy_labels = None if noisy_indices is None else data.splits["train"].labels[noisy_indices]
    return RunData(
        train_loader,
        eval_sets,
        data.eval_augment,
        data.num_classes,
        data.in_channels,
        noisy_indices,
        noisy_labels,
        folder=data,
    )


def clean_training_subset(
    data: RunData, n: int, seed: int, device: torch.device, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """``n`` training images chosen by :func:`~friendly_sam.data.subset` with ``seed`` (the same choice on
    every data path), without augmentation (``eval_transform``), with their training labels, on ``device``:
    the fixed data of ``fsam analyze`` and ``--decomposition``. A streamed image folder decodes just these."""
    loader = data.train_loader
    n = min(n, loader.num_samples)
    images = getattr(loader, "images", None)
    if images is not None:
        x, y = subset(images, loader.labels, n, seed=seed)
        return data.eval_transform(x.to(device)), y.to(device, torch.int64)
    if data.folder is None:
        raise ValueError(f"{type(loader).__name__} holds no training images to take a subset of")
    idx, _ = subset(torch.arange(loader.num_samples), data.folder.splits["train"].labels, n, seed=seed)
    part = data.folder.take("train", idx, into="subset").loader("subset", batch_size, device=device)
    part.set_epoch(0)
    batches = list(part)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]).to(torch.int64)


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


@torch.no_grad()
def evaluate_batches(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], cfg: TrainConfig, device: torch.device
) -> tuple[float, int, int]:
    """Summed cross-entropy, correct predictions and images over ready ``(x, y)`` batches, in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        if len(y) == 0:  # a rank's empty share of a small last batch
            continue
        x, y = x.to(device), y.to(device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, cfg.bf16):
            logits = model(x)
        total_loss += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    model.train(was_training)
    return total_loss, correct, seen


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    transform: Callable[[Tensor], Tensor],
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) over a whole split, in eval mode."""
    bs = cfg.eval_batch_size
    batches = (
        (transform(images[i : i + bs].to(device)), labels[i : i + bs]) for i in range(0, len(labels), bs)
    )
    total_loss, correct, seen = evaluate_batches(model, batches, cfg, device)
    return total_loss / len(labels), 100.0 * correct / len(labels)


def evaluate_split(
    model: nn.Module,
    source: tuple[Tensor, Tensor] | BatchSchedule,
    transform: Callable[[Tensor], Tensor],
    cfg: TrainConfig,
    device: torch.device,
    ctx: DistributedContext,
) -> tuple[float, float]:
    """Mean loss and accuracy (%) of one evaluation split over all ranks (each evaluates its part)."""
    if not isinstance(source, BatchSchedule):
        measure = partial(evaluate, transform=transform, cfg=cfg, device=device)
        return ctx.evaluate(measure, model, *source)
    source.set_epoch(0)
    total_loss, correct, seen = ctx.all_sum(list(evaluate_batches(model, source, cfg, device)))
    return total_loss / max(1, seen), 100.0 * correct / max(1, seen)
