"""The training loop: data as tensors, any optimizer, per-epoch metrics, atomic checkpoints, exact resume.

:func:`train` is the one entry point (``fsam train``, ``fsam demo`` and the benchmarks call it). Its
extension points: ``optimizer_factory`` (build another optimizer), ``step_fn`` (another training step) and
``callbacks`` (:mod:`friendly_sam.train.callbacks`). The files it writes are described, read and written by
:mod:`friendly_sam.train.run_dir`. See docs/trainer.md.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..distributed import DistributedContext, gather_replica_states, init_from_env, load_replica_state
from ..models import build_model, load_pretrained
from . import run_dir as rd
from .callbacks import Callback, CallbackList, TrainState, builtin_callbacks
from .checkpoint import CheckpointError, check_resume_config, load_state_checked, make_checkpoint
from .config import TrainConfig
from .data_setup import check_data_identity, prepare_data
from .divergence import DIVERGENCE_LOSS, all_finite, check_diverged, check_weights_finite
from .evaluation import evaluate
from .lock import RunLock, create_run_dir, open_run_dir
from .metrics import EpochMetrics
from .progress import ProgressBar, epoch_line
from .run_dir import RunDirectoryError
from .setup import OptimizerFactory, build_optimizer, lr_factor
from .step import ddp_training_step, training_step
from .summary import summarize

__all__ = ["DIVERGENCE_LOSS", "RunDirectoryError", "StepFn", "load_run_config", "summarize", "train"]

Log = Callable[[str], None]
Step = Callable[[nn.Module, Tensor, Tensor, int], tuple[Tensor, Tensor]]  # step(net, x, y, batch index)


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
    writes files and logs; see docs/distributed.md.

    The run directory is locked for the whole run (:mod:`friendly_sam.train.lock`): a second writer gets
    :class:`~friendly_sam.train.lock.RunInUseError`. A resume verifies the checkpoint and compares the whole
    configuration before any file is touched (docs/reliability.md). A diverging run (a loss not finite or
    above :data:`DIVERGENCE_LOSS`) stops with :class:`FloatingPointError`; nothing non-finite is written."""
    cfg.validate()
    ctx = init_from_env(cfg.device, timeout=cfg.dist_timeout)
    try:
        if not ctx.is_main:
            progress, log = False, lambda message: None
        if ctx.enabled and (cfg.full_gradient == "oracle" or cfg.decomposition):
            raise ValueError(
                "--full-gradient oracle and --decomposition need a single process (not torchrun)"
            )
        if ctx.enabled and step_fn is not None:
            raise ValueError("step_fn replaces the single-process step; under torchrun the DDP step is used")
        run_dir = Path(run_dir)
        hooks = CallbackList(
            [*builtin_callbacks(cfg, ctx.is_main), *callbacks]
        )  # a missing package: stop now
        lock = ctx.main_first(lambda: _lock_run_dir(run_dir, resume, log))  # rank 0 alone holds it
        with lock if lock is not None else contextlib.nullcontext():
            ckpt = _checkpoint_to_resume(cfg, run_dir, log) if resume else None
            if resume and _finished(run_dir, ckpt, cfg, log):
                return rd.read_summary(run_dir)
            _configure_torch(cfg)
            state = _build(cfg, run_dir, ctx, ckpt, optimizer_factory or build_optimizer, log, lock)
            unused = hooks.load_state_dict(ckpt.get("callbacks", {})) if ckpt else []
            if unused:
                log(f"note: the checkpoint holds the state of callback(s) not given now: {', '.join(unused)}")
            return _run(_Loop(state, ctx, hooks, _choose_step(cfg, ctx, state, step_fn), progress, log))
    finally:
        ctx.close()


def _finished(run_dir: Path, ckpt: dict[str, Any], cfg: TrainConfig, log: Log) -> bool:
    """Whether the run to resume is complete: all its epochs done, or stopped early by a callback."""
    if not rd.has_summary(run_dir):
        return False
    stopped = rd.read_summary(run_dir).get("stopped_early")
    if ckpt["epoch"] < cfg.epochs and not stopped:
        return False
    log(f"{run_dir}: already finished" + (f" (stopped early: {stopped['reason']})" if stopped else ""))
    return True


def _lock_run_dir(run_dir: Path, resume: bool, log: Log) -> RunLock:
    """The run directory's lock, held for the whole run: claimed fresh (refused when it holds a run or
    another process writes it) or, to resume, opened (refused while another process writes it)."""
    lock = open_run_dir(run_dir) if resume else create_run_dir(run_dir)
    for note in lock.notes:
        log(note)
    if lock.removed_temp_files:
        log(f"{run_dir}: removed {len(lock.removed_temp_files)} temporary file(s) of interrupted writes")
    return lock


def _checkpoint_to_resume(cfg: TrainConfig, run_dir: Path, log: Log) -> dict[str, Any]:
    """The checkpoint of ``run_dir``, verified and checked against ``cfg`` (read under the run's lock)."""
    if not rd.has_checkpoint(run_dir) and not (run_dir / rd.CHECKPOINT_FILE).exists():
        raise RunDirectoryError(
            f"{run_dir} has no checkpoint yet (the run stopped before its first checkpoint): start it anew "
            f"with `fsam train --config {run_dir / rd.CONFIG_FILE} --out {run_dir}`"
        )
    return rd.read_checkpoint(run_dir, cfg.to_dict(), note=log)


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
    lock: RunLock | None,
) -> TrainState:
    """Data, run directory, model, optimizer and schedule; restored from ``ckpt`` when resuming."""
    try:  # a missing data set, package or weights file leaves no run directory behind
        data = prepare_data(cfg, ctx.device, shard=(ctx.rank, ctx.world_size), log=log)
        if ckpt is not None:  # before anything of the run is touched
            check_data_identity(ckpt.get("data"), data, cfg, f"checkpoint {run_dir / rd.CHECKPOINT_FILE}", log)
        ctx.check_batches(data.train_loader.num_samples, cfg.batch_size)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.num_classes, data.in_channels)
        if ckpt is None and cfg.pretrained is not None:  # on resume the checkpoint holds the weights
            log(load_pretrained(model, cfg.pretrained, new_head=cfg.new_head).summary())
    except BaseException:
        if ckpt is None and lock is not None:
            lock.discard()
        raise
    model = model.to(ctx.device)
    if ckpt is None and ctx.is_main:
        rd.write_config(run_dir, cfg)
    if ctx.is_main and data.noisy_indices is not None and not rd.has_label_noise(run_dir):
        rd.write_label_noise(run_dir, cfg, data.noisy_indices.tolist(), data.noisy_labels.tolist())
    if ctx.is_main and data.folder is not None and not rd.has_data_record(run_dir):
        rd.write_data_record(run_dir, data.folder.record())  # classes in label order, skipped files
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
    """Load the checkpoint into model, optimizer, schedule and RNG; only then touch the run's files:
    drop the metrics of epochs after the checkpoint, record changed options (config.json, resumes.jsonl)."""
    path = state.run_dir / rd.CHECKPOINT_FILE
    load_state_checked(state.model, ckpt["model"], path, "model")
    load_state_checked(state.optimizer, ckpt["optimizer"], path, "optimizer")
    load_state_checked(state.scheduler, ckpt["scheduler"], path, "learning-rate schedule")
    load_replica_state(state.optimizer, ckpt.get("replica_states", []), ctx.rank)  # per-replica F-SAM EMAs
    if not all_finite(state):  # the trainer never writes such a file: damaged or tampered with
        raise CheckpointError(f"checkpoint {path} holds weights or optimizer state that are not finite")
    torch.set_rng_state(ckpt["rng"]["torch"])
    state.start_epoch = state.epoch = state.checkpoint_epoch = ckpt["epoch"]
    state.elapsed_before = ckpt["elapsed"]
    metrics = rd.metrics_until(state.run_dir, state.start_epoch)  # all of them, or refused
    state.metrics = metrics
    if not ctx.is_main:
        return
    rd.rewrite_metrics(state.run_dir, metrics)
    changes = check_resume_config(ckpt["config"], state.cfg.to_dict(), ckpt["epoch"]).changes
    if changes:  # safe options changed on this resume (more epochs, another device, ...): record them
        rd.write_config(state.run_dir, state.cfg)
        rd.record_resume(
            state.run_dir,
            {
                "after_epoch": ckpt["epoch"],
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "changes": {k: {"checkpoint": old, "now": new} for k, (old, new) in changes.items()},
            },
        )


def _choose_step(
    cfg: TrainConfig, ctx: DistributedContext, state: TrainState, step_fn: StepFn | None
) -> Step:
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
                mode=cfg.ddp_mode,
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


@dataclass(frozen=True)
class _Loop:
    """What the training loop's functions share: the run's state and the fixed parts of this run."""

    state: TrainState
    ctx: DistributedContext
    hooks: CallbackList
    step: Step
    progress: bool  # show a progress bar
    log: Log


def _run(loop: _Loop) -> dict[str, Any]:
    """The epochs, with the callbacks' ``on_exception`` on failure and their ``teardown`` always."""
    state, hooks, log = loop.state, loop.hooks, loop.log
    try:
        hooks.call("on_train_start", state)
        summary = _epochs(loop)
    except BaseException as exc:
        state.exception = exc
        for hook in ("on_exception", "teardown"):  # every callback's; the run's own error propagates
            try:
                hooks.call_all(hook, state)
            except Exception as extra:
                log(f"note: a callback's {hook} failed as well ({type(extra).__name__}: {extra})")
        raise
    hooks.call_all("teardown", state)
    return summary


def _epochs(loop: _Loop) -> dict[str, Any]:
    """The epochs from ``start_epoch``: train, evaluate, record, checkpoint; then the summary."""
    state, ctx, hooks, log, cfg = loop.state, loop.ctx, loop.hooks, loop.log, loop.state.cfg
    net = ctx.wrap(state.model, sync_bn=cfg.sync_bn)  # DDP under torchrun; `state.model` stays bare
    state.model.train()
    run_start = time.perf_counter()
    for epoch in range(state.start_epoch, cfg.epochs):
        state.record = record = _train_epoch(loop, net, epoch)
        check_diverged(state, epoch, {"training loss": record["train_loss"]})
        hooks.call("on_epoch_record", state)
        ctx.broadcast_buffers(state.model)  # rank 0's BatchNorm statistics: those it checkpoints
        _evaluate_splits(loop, record)
        check_diverged(
            state, epoch, {f"{k.replace('_', ' ')}": v for k, v in record.items() if k[-4:] == "loss"}
        )
        record["elapsed"] = state.elapsed_before + time.perf_counter() - run_start
        state.metrics.append(record)
        state.epoch = epoch + 1
        if ctx.is_main:
            rd.append_metrics(state.run_dir, record)
        hooks.call("on_epoch_end", state)
        log(epoch_line(cfg.label, cfg.epochs, record))
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs or state.should_stop:
            check_weights_finite(state, epoch)
            _save_checkpoint(loop, record["elapsed"])
            state.checkpoint_epoch = epoch + 1
        if state.should_stop:  # set by a callback: the run ends here, complete
            log(
                f"{cfg.label}: stopped after epoch {epoch + 1}/{cfg.epochs}: {state.stop_reason or 'a callback'}"
            )
            break
    state.summary = summary = summarize(cfg, state.metrics)
    summary["world_size"] = ctx.world_size
    if state.should_stop:
        summary["stopped_early"] = {"after_epoch": state.epoch, "reason": state.stop_reason}
    hooks.call("on_train_end", state)
    if ctx.is_main:
        rd.write_summary(state.run_dir, summary)
    ctx.barrier()  # the run is complete (files written) when any rank returns
    return summary


def _train_epoch(loop: _Loop, net: nn.Module, epoch: int) -> dict[str, Any]:
    """One pass over the training data; returns the training part of the epoch's record."""
    state, ctx, hooks, step, progress = loop.state, loop.ctx, loop.hooks, loop.step, loop.progress
    cfg, device, loader = state.cfg, state.device, state.data.train_loader
    loader.set_epoch(epoch)
    bar = ProgressBar(state.steps_per_epoch, f"{cfg.label} epoch {epoch + 1}/{cfg.epochs}", enabled=progress)
    metrics = EpochMetrics(device)  # sums on the device: read every READ_EVERY steps, not every step
    shown: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        state.step = epoch * state.steps_per_epoch + i
        hooks.call("before_step", state)
        loss, logits = step(net, x, y, i)
        state.scheduler.step()
        state.loss = loss
        hooks.call("after_step", state)
        # the clean pass's samples: a sub-batch on perturbed steps with --ascent-fraction < 1
        metrics.add(loss, logits, y)
        if EpochMetrics.is_read_point(i, state.steps_per_epoch) and (progress or not ctx.enabled):
            loss_sum, correct = metrics.read()  # the one host synchronisation of these steps
            if not ctx.enabled:  # stop early; under DDP at the epoch's end
                check_diverged(state, epoch, {"training loss": loss_sum / metrics.seen})
            shown = {"loss": loss_sum / metrics.scored, "acc": 100.0 * correct / metrics.scored}
        if progress:
            bar.update(i + 1, **shown, **{"img/s": metrics.seen / (time.perf_counter() - t0)})
    sums = metrics.read()  # waits for the device's last step: train_time includes it
    train_time = time.perf_counter() - t0
    bar.close()
    total_loss, total_correct, scored, seen = ctx.all_sum([*sums, metrics.scored, metrics.seen])
    return {
        "epoch": epoch + 1,
        "train_loss": total_loss / scored,
        "train_acc": 100.0 * int(total_correct) / scored,
        "lr": state.optimizer.param_groups[0]["lr"],
        "train_time": train_time,
        "images_per_s": seen / train_time,
    }


def _evaluate_splits(loop: _Loop, record: dict[str, Any]) -> None:
    """Loss and accuracy of the splits the callbacks choose (sharded over ranks); None for the others
    (``null`` in metrics.jsonl: not measured)."""
    state = loop.state
    data, cfg = state.data, state.cfg
    state.splits = list(data.eval_sets)
    loop.hooks.call("before_evaluation", state)
    chosen = state.splits
    measure = partial(evaluate, cfg=cfg, device=state.device, ctx=loop.ctx)
    for split, source in data.eval_sets.items():
        if split in chosen:
            record[f"{split}_loss"], record[f"{split}_acc"] = measure(state.model, source)
        else:
            record[f"{split}_loss"], record[f"{split}_acc"] = None, None


def _save_checkpoint(loop: _Loop, elapsed: float) -> None:
    state, ctx, cfg = loop.state, loop.ctx, loop.state.cfg
    # per-replica F-SAM: every rank's own EMA (a collective); else [] without communicating
    replicas = gather_replica_states(state.optimizer) if ctx.enabled and cfg.ddp_mode == "per-replica" else []
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
        data=state.data.fingerprint,
        **({"callbacks": states} if (states := loop.hooks.state_dict()) else {}),  # only if a callback has state
    )
    rd.write_checkpoint(state.run_dir, checkpoint)
