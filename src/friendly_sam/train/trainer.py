"""The training loop: data as tensors, any optimizer, per-epoch metrics, atomic checkpoints, exact resume.

A run directory holds::

    config.json       the resolved configuration
    metrics.jsonl     one JSON object per epoch (train/val/test loss and accuracy, lr, time, images/s)
    summary.json      written at the end (final and best accuracies, wall time)
    checkpoint.pt     model + optimizer + scheduler + RNG state after the last checkpointed epoch
    label_noise.json  with label noise: the corrupted indices and their noisy labels
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import BatchAugment, TensorBatchLoader, apply_label_noise, load_dataset, subset, train_val_split
from ..models import build_model
from ..optim import SAM, FriendlySAM
from .checkpoint import load_checkpoint, make_checkpoint, save_atomic, write_text_atomic
from .config import TrainConfig
from .progress import ProgressBar, format_seconds
from .step import autocast_context, training_step

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE = (
    "config.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoint.pt",
)
NOISE_FILE = "label_noise.json"


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (exists already, or holds no run to resume)."""


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


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
    common = {"rho": cfg.rho, "max_grad_norm": cfg.max_grad_norm, **base_kw}
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


def decomposition_monitor(
    cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, data: RunData, device: torch.device
) -> Any:
    """The oracle full gradient / diagnostics helper (``--full-gradient oracle``, ``--diagnostics``), or None.

    See :mod:`friendly_sam.analysis.decomposition` for what is computed on which data."""
    if cfg.full_gradient != "oracle" and not cfg.diagnostics:
        return None
    from ..analysis.decomposition import DecompositionMonitor

    loader = data.train_loader
    fixed = None
    if cfg.diagnostics:
        n = min(cfg.diagnostics_subset, loader.num_samples)
        images, labels = subset(loader.images, loader.labels, n, seed=cfg.seed)
        fixed = (data.eval_transform(images.to(device)), labels.to(device, torch.int64))
    return DecompositionMonitor(
        model,
        optimizer,
        loader,
        oracle_every=cfg.oracle_every if cfg.full_gradient == "oracle" else None,
        diagnostics=cfg.diagnostics,
        diagnostics_every=cfg.diagnostics_every,
        subset=fixed,
        batch_size=cfg.batch_size,
        autocast=lambda: autocast_context(device, cfg.bf16),
        prepare=(lambda x: x.contiguous(memory_format=torch.channels_last)) if cfg.channels_last else None,
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


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_run_dir_is_free(run_dir: Path) -> None:
    """Refuse a run directory that holds files: it is never silently overwritten."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirectoryError(
            f"run directory {run_dir} already exists and is not empty; continue it with "
            f"`fsam train --resume {run_dir}`, or choose another --out"
        )


def prepare_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    """Create a fresh run directory; never reuse one that holds files."""
    check_run_dir_is_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_FILE, cfg.to_json() + "\n")


def load_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(
            f"{run_dir} holds no run to resume (no {CONFIG_FILE}); start one with fsam train"
        )
    return TrainConfig.from_dict(json.loads(path.read_text()), source=str(path)).validate()


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one run into ``run_dir`` (fresh, or continued from its checkpoint with ``resume``).

    Under ``torchrun`` every process runs this: data-parallel (DDP) over the global batch, rank 0 alone
    writes files and logs; see docs/distributed.md."""
    cfg.validate()
    from ..distributed import init_from_env

    ctx = init_from_env(cfg.device)
    try:
        if not ctx.is_main:
            progress, log = False, lambda message: None
        return _train(cfg, Path(run_dir), ctx, resume=resume, progress=progress, log=log)
    finally:
        ctx.close()


def _train(
    cfg: TrainConfig, run_dir: Path, ctx: Any, *, resume: bool, progress: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    from ..distributed import ddp_training_step, gather_replica_states, load_replica_state

    device = ctx.device
    if ctx.enabled and (cfg.full_gradient == "oracle" or cfg.diagnostics):
        raise ValueError("--full-gradient oracle and --diagnostics need a single process (not torchrun)")
    ckpt = None
    if resume:
        ckpt = load_checkpoint(run_dir / CHECKPOINT_FILE, cfg.to_dict())  # refuses before touching anything
        if (run_dir / SUMMARY_FILE).exists() and ckpt["epoch"] >= cfg.epochs:
            log(f"{run_dir}: already finished")
            return json.loads((run_dir / SUMMARY_FILE).read_text())
    else:
        ctx.main_first(lambda: check_run_dir_is_free(run_dir))
    if cfg.tensorboard and ctx.is_main:
        _require_tensorboard()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)

    data = prepare_data(cfg, device, shard=(ctx.rank, ctx.world_size))
    ctx.check_batches(data.train_loader.num_samples, cfg.batch_size)
    if not resume:  # only now: a missing data set or package leaves no run directory behind
        ctx.main_first(lambda: prepare_run_dir(run_dir, cfg))
    if ctx.is_main and data.noisy_indices is not None and not (run_dir / NOISE_FILE).exists():
        write_text_atomic(
            run_dir / NOISE_FILE,
            json.dumps(
                {
                    "rate": cfg.label_noise,
                    "kind": cfg.noise_kind,
                    "seed": cfg.seed,
                    "indices": data.noisy_indices.tolist(),
                    "noisy_labels": data.noisy_labels.tolist(),
                }
            ),
        )
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, data.in_channels).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = len(data.train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    start_epoch, elapsed_before = 0, 0.0
    metrics = []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        load_replica_state(optimizer, ckpt.get("replica_states", []), ctx.rank)  # per-replica F-SAM EMAs
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch, elapsed_before = ckpt["epoch"], ckpt["elapsed"]
        metrics = [m for m in _read_metrics(run_dir) if m["epoch"] <= start_epoch]
        if ctx.is_main:
            write_text_atomic(run_dir / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in metrics))
        log(f"resuming {run_dir} after epoch {start_epoch}/{cfg.epochs}")
    writer = _tensorboard_writer(run_dir) if cfg.tensorboard and ctx.is_main else None
    net = ctx.wrap(model, sync_bn=cfg.sync_bn)  # DDP under torchrun; `model` stays the bare module
    monitor = decomposition_monitor(cfg, model, optimizer, data, device)

    model.train()
    run_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        data.train_loader.set_epoch(epoch)
        bar = ProgressBar(steps_per_epoch, f"{cfg.label} epoch {epoch + 1}/{cfg.epochs}", enabled=progress)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(data.train_loader):
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if monitor is not None:
                monitor.before_step(epoch * steps_per_epoch + i, epoch)
            if ctx.enabled:  # global batch i: its size weighs this rank's part of the loss
                size = min(cfg.batch_size, data.train_loader.num_samples - i * cfg.batch_size)
                loss, logits = ddp_training_step(
                    net,
                    optimizer,
                    x,
                    y,
                    mode=cfg.perturbation,
                    global_batch_size=size,
                    bf16=cfg.bf16,
                    max_grad_norm=cfg.max_grad_norm,
                )
            else:
                loss, logits = training_step(
                    model, optimizer, x, y, bf16=cfg.bf16, max_grad_norm=cfg.max_grad_norm
                )
            scheduler.step()
            loss_sum += loss.float() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if progress:
                rate = seen / (time.perf_counter() - t0)
                bar.update(
                    i + 1, loss=float(loss_sum) / seen, acc=100.0 * int(correct) / seen, **{"img/s": rate}
                )
        train_time = time.perf_counter() - t0
        bar.close()
        total_loss, total_correct, seen = ctx.all_sum([float(loss_sum), int(correct), seen])  # over ranks
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": total_loss / seen,
            "train_acc": 100.0 * int(total_correct) / seen,
            "lr": optimizer.param_groups[0]["lr"],
            "train_time": train_time,
            "images_per_s": seen / train_time,
        }
        if monitor is not None:
            record.update(monitor.epoch_record())
        if not math.isfinite(record["train_loss"]):
            raise FloatingPointError(
                f"training loss became {record['train_loss']} in epoch {epoch + 1}; lower --lr"
            )
        ctx.broadcast_buffers(model)  # rank 0's BatchNorm statistics: those it checkpoints
        for split, (xs, ys) in data.eval_sets.items():  # sharded over ranks, then reduced
            record[f"{split}_loss"], record[f"{split}_acc"] = ctx.evaluate(
                evaluate, model, xs, ys, data.eval_transform, cfg, device
            )
        record["elapsed"] = elapsed_before + time.perf_counter() - run_start
        metrics.append(record)
        if ctx.is_main:
            with open(run_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        if writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, epoch + 1)
        val = f" val {record['val_acc']:.2f}%" if "val_acc" in record else ""
        log(
            f"{cfg.label} epoch {epoch + 1}/{cfg.epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.2f}%{val} test {record['test_acc']:.2f}% "
            f"({record['images_per_s']:.0f} img/s, {format_seconds(record['elapsed'])})"
        )
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            # per-replica F-SAM: every rank's own EMA (a collective); else [] without communicating
            replicas = (
                gather_replica_states(optimizer) if ctx.enabled and cfg.perturbation == "per-replica" else []
            )
            if ctx.is_main:
                save_atomic(
                    make_checkpoint(
                        cfg.to_dict(),
                        epoch=epoch + 1,
                        elapsed=record["elapsed"],
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(),
                        rng={"torch": torch.get_rng_state()},
                        replica_states=replicas,
                        world_size=ctx.world_size,
                    ),
                    run_dir / CHECKPOINT_FILE,
                )
    if writer is not None:
        writer.close()
    summary = summarize(cfg, metrics)
    summary["world_size"] = ctx.world_size
    if ctx.is_main:
        write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    ctx.barrier()  # the run is complete (files written) when any rank returns
    return summary


def summarize(cfg: TrainConfig, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    last = metrics[-1]
    summary = {
        "label": cfg.label,
        "optimizer": cfg.optimizer,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "label_noise": cfg.label_noise,
        "noise_kind": cfg.noise_kind,
        "final_test_acc": last["test_acc"],
        "best_test_acc": max(m["test_acc"] for m in metrics),
        "final_train_loss": last["train_loss"],
        "wall_time": last["elapsed"],
        "mean_images_per_s": sum(m["images_per_s"] for m in metrics) / len(metrics),
        "machine": machine_description(),
    }
    if "val_acc" in last:
        summary["final_val_acc"] = last["val_acc"]
        summary["best_val_acc"] = max(m["val_acc"] for m in metrics)
    return summary


def _require_tensorboard() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ModuleNotFoundError(
            "--tensorboard needs the tensorboard package: pip install tensorboard (or drop --tensorboard)"
        ) from exc
    return SummaryWriter


def _tensorboard_writer(run_dir: Path) -> Any:
    return _require_tensorboard()(str(run_dir / "tensorboard"))
