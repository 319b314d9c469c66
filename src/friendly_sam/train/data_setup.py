"""The data of a run, built from its configuration: loaded, split, noised, and checked against a checkpoint.

:func:`prepare_data` is also how ``fsam analyze`` rebuilds the training data a run saw. Whatever the data
set (a built-in one or ``--dataset imagefolder``), the work is the data layer's: one
:class:`~friendly_sam.data.ImageData`, one :func:`~friendly_sam.data.prepare_splits`, loaders of one type.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data import (
    IMAGE_FOLDER,
    BatchAugment,
    BatchSchedule,
    ImageData,
    ImageFolderData,
    InMemorySamples,
    SplitPlan,
    load_dataset,
    load_image_folder,
    prepare_splits,
)
from ..data.identity import check_same_data
from ..data.imagefolder import DEFAULT_MAX_IMAGE_SIZE
from ..data.splits import subset_indices
from ..files import check_memory
from ..models import model_in_channels
from .config import TrainConfig

__all__ = ["RunData", "check_data_identity", "clean_training_subset", "prepare_data"]

Log = Callable[[str], None]
_LARGE = 96  # image side from which a CIFAR-style network (no downsampling stem) is worth a note


@dataclass
class RunData:
    """Everything the loop needs from the data, prepared once.

    ``source`` is the prepared :class:`~friendly_sam.data.ImageData` (its ``train`` split as trained on,
    noisy labels included); ``train_loader`` this rank's training batches; ``eval_sets`` a loader of ready
    (normalised, centre-cropped) batches per evaluation split, ``val`` and / or ``test``, this rank's part
    of every batch; ``noisy_indices`` / ``noisy_labels`` the training samples the label noise changed."""

    source: ImageData
    train_loader: BatchSchedule
    eval_sets: dict[str, BatchSchedule]
    noisy_indices: Tensor | None
    noisy_labels: Tensor | None

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def in_channels(self) -> int:
        return self.source.in_channels

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What the data is (:mod:`friendly_sam.data.identity`): stored in every checkpoint."""
        return self.source.fingerprint

    @property
    def folder(self) -> ImageFolderData | None:
        """The image folder (``--dataset imagefolder``), else ``None``: its ``record()`` is ``classes.json``."""
        return self.source if isinstance(self.source, ImageFolderData) else None

    def training_samples(self, indices: Tensor, batch_size: int, device: torch.device) -> BatchSchedule:
        """Training samples ``indices`` with their training labels, without augmentation, in a fixed order."""
        return self.source.take("train", indices, into="chosen").loader("chosen", batch_size, device=device)


def _load(cfg: TrainConfig, log: Log | None) -> ImageData:
    if cfg.dataset != IMAGE_FOLDER:
        data = load_dataset(cfg.dataset, root=cfg.data_dir, download=cfg.download)
        augment = BatchAugment.for_dataset(data, crop=cfg.crop, flip=cfg.flip, cutout=cfg.cutout)
        return dataclasses.replace(data, train_augment=augment)
    # Under torchrun every process of a machine holds its own copy: the budget is shared among them.
    per_machine = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    budget = None if cfg.memory_budget is None else int(cfg.memory_budget * (1 << 30)) // per_machine
    assert cfg.data_dir is not None  # validate() requires it
    side = cfg.resize_size or cfg.image_size or DEFAULT_MAX_IMAGE_SIZE  # the default size is at most this
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


def prepare_data(
    cfg: TrainConfig, device: torch.device, shard: tuple[int, int] = (0, 1), log: Log | None = None
) -> RunData:
    """The data of a run: loaded (``log`` receives an image folder's description and skipped files),
    subset, split and noised as ``cfg`` says, with this rank's (``shard``) loaders."""
    plan = SplitPlan(
        train_subset=cfg.train_subset,
        val_size=cfg.val_size,
        test_subset=cfg.test_subset,
        label_noise=cfg.label_noise,
        noise_kind=cfg.noise_kind,
        seed=cfg.seed,
    )
    data, noisy_indices = prepare_splits(_load(cfg, log), plan)
    train = data.splits["train"]
    if device.type == "cuda" and isinstance(train, InMemorySamples) and not isinstance(data, ImageFolderData):
        # a built-in set lives on the GPU: one transfer, batches indexed there
        on_gpu = InMemorySamples(train.images.to(device), train.labels.to(device))
        data = dataclasses.replace(data, splits={**data.splits, "train": on_gpu})
    if log is not None and data.image_size >= _LARGE and ":" not in cfg.model and not cfg.model.endswith("_imagenet"):
        log(
            f"note: --model {cfg.model} keeps the full {data.image_size}x{data.image_size} resolution in its first "
            "stage (a CIFAR stem); --model resnet18_imagenet or resnet50_imagenet downsample by 4 first"
        )
    train_loader = data.loader("train", cfg.batch_size, train=True, seed=cfg.seed, device=device, shard=shard)
    eval_sets = {
        name: data.loader(name, cfg.eval_batch_size, device=device, shard=shard)
        for name in ("val", "test")
        if name in data.splits  # an image folder without test/ evaluates val only
    }
    noisy_labels = None if noisy_indices is None else data.splits["train"].labels[noisy_indices]
    return RunData(data, train_loader, eval_sets, noisy_indices, noisy_labels)


def clean_training_subset(
    data: RunData, n: int, seed: int, device: torch.device, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """``n`` training images chosen by :func:`~friendly_sam.data.subset` with ``seed`` (the same choice on
    every data path), without augmentation, with their training labels, on ``device``: the fixed data of
    ``fsam analyze`` and ``--decomposition``. A streamed image folder decodes just these."""
    total = len(data.source.splits["train"])
    part = data.training_samples(subset_indices(total, min(n, total), seed), batch_size, device)
    part.set_epoch(0)
    batches = list(part)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]).to(torch.int64)


def check_data_identity(
    saved: Mapping[str, Any] | None, data: RunData, cfg: TrainConfig, where: str, log: Log
) -> None:
    """Resume: refuse data that differs from the checkpoint's (:class:`~friendly_sam.data.DataChangedError`,
    naming each change) unless ``--accept-data-change``; then log what was accepted."""
    for change in check_same_data(saved, data.fingerprint, accept=cfg.accept_data_change, where=where):
        log(f"--accept-data-change: training goes on with changed data: {change}")
