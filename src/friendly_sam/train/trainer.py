"""The training loop: data as tensors, any optimizer, per-epoch metrics, atomic checkpoints, exact resume.

:func:`train` is the one entry point (``fsam train``, ``fsam demo`` and the benchmarks call it). Its
extension points: ``optimizer_factory`` (build another optimizer), ``step_fn`` (another training step) and
``callbacks`` (:mod:`friendly_sam.train.callbacks`). The files it writes are described, read and written by
:mod:`friendly_sam.train.run_dir`. See docs/trainer.md.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..distributed import DistributedContext, gather_replica_states, init_from_env, load_replica_state
from ..models import build_model
from . import run_dir as rd
from .callbacks import Callback, CallbackList, TrainState, builtin_callbacks
from .checkpoint import make_checkpoint
from .config import TrainConfig
from .progress import ProgressBar, format_seconds
from .run_dir import RunDirectoryError, machine_description
from .setup import OptimizerFactory, build_optimizer, evaluate, lr_factor, prepare_data
from .step import ddp_training_step, training_step

__all__ = ["RunDirectoryError", "StepFn", "load_run_config", "summarize", "train"]

Log = Callable[[str], None]


class StepFn(Protocol):
    """A training step: forward/backward and optimizer step on one batch; returns the clean ``(loss, logits)``
    (detached). :func:`~friendly_sam.train.step.training_step` is the default."""

    def __call__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: Tensor,
        y: Tensor,
        *,
        bf16: bool,
        max_grad_norm: float | None,
    ) -> tuple[Tensor, Tensor]: ...


def load_run_config(run_dir: Path) -> TrainConfig:
    """The validated configuration of an existing run (to resume it)."""
    return rd.read_config(Path(run_dir))


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
    optimizer_factory: OptimizerFactory | None = None,
    step_fn: StepFn | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train one run into ``run_dir`` (fresh, or continued from its checkpoint with ``resume``).

    ``optimizer_factory(cfg, model)`` builds the optimizer (default :func:`build_optimizer`; anything with
    ``first_step``/``second_step`` takes the two-pass step). ``step_fn`` replaces the training step
    (single process only; default :func:`~friendly_sam.train.step.training_step`). ``callbacks`` run after
    the built-in ones (TensorBoard, decomposition monitor), in order. Returns the summary (``summary.json``).

    Under ``torchrun`` every process runs this: data-parallel (DDP) over the global batch, rank 0 alone
    writes files and logs; see docs/distributed.md."""
    cfg.validate()
    ctx = init_from_env(cfg.device)
    try:
        if not ctx.is_main:
            progress, log = False, lambda message: None
        if ctx.enabled and (cfg.full_gradient == "oracle" or cfg.diagnostics):
            raise ValueError("--full-gradient oracle and --diagnostics need a single process (not torchrun)")
        if ctx.enabled and step_fn is not None:
            raise ValueError("step_fn replaces the single-process step; under torchrun the DDP step is used")
        run_dir = Path(run_dir)
        ckpt = _check_start(cfg, run_dir, ctx, resume)
        if resume and rd.has_summary(run_dir) and ckpt["epoch"] >= cfg.epochs:
            log(f"{run_dir}: already finished")
            return rd.read_summary(run_dir)
        hooks = CallbackList([*builtin_callbacks(cfg, ctx.is_main), *callbacks])
        _configure_torch(cfg)
        state = _build(cfg, run_dir, ctx, ckpt, optimizer_factory or build_optimizer, log)
        return _run(state, ctx, hooks, _choose_step(cfg, ctx, state, step_fn), progress, log)
    finally:
        ctx.close()


def _check_start(cfg: TrainConfig, run_dir: Path, ctx: DistributedContext, resume: bool) -> Any:
    """The checkpoint to resume from (refused before anything is touched), or None for a fresh run."""
    if resume:
        return rd.read_checkpoint(run_dir, cfg.to_dict())
    ctx.main_first(lambda: rd.check_free(run_dir))
    return None


def _configure_torch(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def _build(
    cfg: TrainConfig,
    run_dir: Path,
    ctx: DistributedContext,
    ckpt: dict[str, Any] | None,
    optimizer_factory: OptimizerFactory,
    log: Log,
) -> TrainState:
    """Data, run directory, model, optimizer and schedule; restored from ``ckpt`` when resuming."""
    data = prepare_data(cfg, ctx.device, shard=(ctx.rank, ctx.world_size))
    ctx.check_batches(data.train_loader.num_samples, cfg.batch_size)
    if ckpt is None:  # only now: a missing data set or package leaves no run directory behind
        ctx.main_first(lambda: rd.create(run_dir, cfg))
    if ctx.is_main and data.noisy_indices is not None and not rd.has_label_noise(run_dir):
        rd.write_label_noise(run_dir, cfg, data.noisy_indices.tolist(), data.noisy_labels.tolist())
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, data.in_channels).to(ctx.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optimizer_factory(cfg, model)
    steps_per_epoch = len(data.train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    state = TrainState(
        cfg, run_dir, model, optimizer, scheduler, data, ctx.device, ctx.is_main, steps_per_epoch
    )
    if ckpt is not None:
        _restore(state, ckpt, ctx)
        log(f"resuming {run_dir} after epoch {state.start_epoch}/{cfg.epochs}")
    return state


def _restore(state: TrainState, ckpt: dict[str, Any], ctx: DistributedContext) -> None:
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    load_replica_state(state.optimizer, ckpt.get("replica_states", []), ctx.rank)  # per-replica F-SAM EMAs
    torch.set_rng_state(ckpt["rng"]["torch"])
    state.start_epoch = state.epoch = ckpt["epoch"]
    state.elapsed_before = ckpt["elapsed"]
    state.metrics = [m for m in rd.read_metrics(state.run_dir) if m["epoch"] <= state.start_epoch]
    if ctx.is_main:
        rd.rewrite_metrics(state.run_dir, state.metrics)


def _choose_step(
    cfg: TrainConfig, ctx: DistributedContext, state: TrainState, step_fn: StepFn | None
) -> Callable[[nn.Module, Tensor, Tensor, int], tuple[Tensor, Tensor]]:
    """``step(net, x, y, i)`` for batch ``i``: the DDP step under torchrun, else ``step_fn``."""
    optimizer, loader = state.optimizer, state.data.train_loader
    if ctx.enabled:

        def ddp_step(net: nn.Module, x: Tensor, y: Tensor, i: int) -> tuple[Tensor, Tensor]:
            # global batch i: its size weighs this rank's part of the loss
            size = min(cfg.batch_size, loader.num_samples - i * cfg.batch_size)
            return ddp_training_step(
                net,
                optimizer,
                x,
                y,
                mode=cfg.perturbation,
                global_batch_size=size,
                bf16=cfg.bf16,
                max_grad_norm=cfg.max_grad_norm,
                ascent_fraction=cfg.ascent_fraction,
            )

        return ddp_step
    fn = step_fn or training_step
    # ascent_fraction only when set: a custom step_fn without the argument then fails loudly, never ignores it
    extra = {"ascent_fraction": cfg.ascent_fraction} if cfg.ascent_fraction != 1.0 else {}
    return lambda net, x, y, i: fn(
        net, optimizer, x, y, bf16=cfg.bf16, max_grad_norm=cfg.max_grad_norm, **extra
    )


def _run(
    state: TrainState,
    ctx: DistributedContext,
    hooks: CallbackList,
    step: Callable[[nn.Module, Tensor, Tensor, int], tuple[Tensor, Tensor]],
    progress: bool,
    log: Log,
) -> dict[str, Any]:
    cfg = state.cfg
    net = ctx.wrap(
        state.model, sync_bn=cfg.sync_bn
    )  # DDP under torchrun; `state.model` stays the bare module
    hooks.on_train_start(state)
    state.model.train()
    run_start = time.perf_counter()
    for epoch in range(state.start_epoch, cfg.epochs):
        record = _train_epoch(state, ctx, hooks, net, step, epoch, progress)
        hooks.on_epoch_record(record)
        if not math.isfinite(record["train_loss"]):
            raise FloatingPointError(
                f"training loss became {record['train_loss']} in epoch {epoch + 1}; lower --lr"
            )
        ctx.broadcast_buffers(state.model)  # rank 0's BatchNorm statistics: those it checkpoints
        _evaluate_splits(state, ctx, hooks, record)
        record["elapsed"] = state.elapsed_before + time.perf_counter() - run_start
        state.metrics.append(record)
        state.epoch = epoch + 1
        if ctx.is_main:
            rd.append_metrics(state.run_dir, record)
        hooks.on_epoch_end(record)
        log(_epoch_line(cfg, record))
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            _save_checkpoint(state, ctx, record["elapsed"])
    summary = summarize(cfg, state.metrics)
    summary["world_size"] = ctx.world_size
    hooks.on_train_end(summary)
    if ctx.is_main:
        rd.write_summary(state.run_dir, summary)
    ctx.barrier()  # the run is complete (files written) when any rank returns
    return summary


def _train_epoch(
    state: TrainState,
    ctx: DistributedContext,
    hooks: CallbackList,
    net: nn.Module,
    step: Callable[[nn.Module, Tensor, Tensor, int], tuple[Tensor, Tensor]],
    epoch: int,
    progress: bool,
) -> dict[str, Any]:
    """One pass over the training data; returns the training part of the epoch's record."""
    cfg, device, loader = state.cfg, state.device, state.data.train_loader
    loader.set_epoch(epoch)
    bar = ProgressBar(state.steps_per_epoch, f"{cfg.label} epoch {epoch + 1}/{cfg.epochs}", enabled=progress)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = scored = 0
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        hooks.before_step(epoch * state.steps_per_epoch + i, epoch)
        loss, logits = step(net, x, y, i)
        state.scheduler.step()
        # the clean pass's samples: a sub-batch on perturbed steps with --ascent-fraction < 1
        loss_sum += loss.float() * len(logits)
        correct += (logits.argmax(1) == y[: len(logits)]).sum()
        scored += len(logits)
        seen += len(y)
        if progress:
            rate = seen / (time.perf_counter() - t0)
            bar.update(
                i + 1, loss=float(loss_sum) / scored, acc=100.0 * int(correct) / scored, **{"img/s": rate}
            )
    train_time = time.perf_counter() - t0
    bar.close()
    total_loss, total_correct, scored, seen = ctx.all_sum([float(loss_sum), int(correct), scored, seen])
    return {
        "epoch": epoch + 1,
        "train_loss": total_loss / scored,
        "train_acc": 100.0 * int(total_correct) / scored,
        "lr": state.optimizer.param_groups[0]["lr"],
        "train_time": train_time,
        "images_per_s": seen / train_time,
    }


def _evaluate_splits(
    state: TrainState, ctx: DistributedContext, hooks: CallbackList, record: dict[str, Any]
) -> None:
    """Loss and accuracy of the splits the callbacks choose (sharded over ranks); NaN for the others."""
    data, cfg = state.data, state.cfg
    chosen = hooks.splits_to_evaluate(record["epoch"], tuple(data.eval_sets))
    measure = partial(evaluate, transform=data.eval_transform, cfg=cfg, device=state.device)
    for split, (xs, ys) in data.eval_sets.items():
        if split in chosen:
            record[f"{split}_loss"], record[f"{split}_acc"] = ctx.evaluate(measure, state.model, xs, ys)
        else:
            record[f"{split}_loss"], record[f"{split}_acc"] = math.nan, math.nan


def _epoch_line(cfg: TrainConfig, record: dict[str, Any]) -> str:
    val = f" val {record['val_acc']:.2f}%" if "val_acc" in record else ""
    return (
        f"{cfg.label} epoch {record['epoch']}/{cfg.epochs}: train loss {record['train_loss']:.4f} "
        f"acc {record['train_acc']:.2f}%{val} test {record['test_acc']:.2f}% "
        f"({record['images_per_s']:.0f} img/s, {format_seconds(record['elapsed'])})"
    )


def _save_checkpoint(state: TrainState, ctx: DistributedContext, elapsed: float) -> None:
    cfg = state.cfg
    # per-replica F-SAM: every rank's own EMA (a collective); else [] without communicating
    replicas = (
        gather_replica_states(state.optimizer) if ctx.enabled and cfg.perturbation == "per-replica" else []
    )
    if not ctx.is_main:
        return
    checkpoint = make_checkpoint(
        cfg.to_dict(),
        epoch=state.epoch,
        elapsed=elapsed,
        model=state.model.state_dict(),
        optimizer=state.optimizer.state_dict(),
        scheduler=state.scheduler.state_dict(),
        rng={"torch": torch.get_rng_state()},
        replica_states=replicas,
        world_size=ctx.world_size,
    )
    rd.write_checkpoint(state.run_dir, checkpoint)


def summarize(cfg: TrainConfig, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The contents of ``summary.json`` for a run's per-epoch records."""
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
