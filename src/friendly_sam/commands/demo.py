"""``fsam demo``: SGD, SAM and F-SAM on real Fashion-MNIST, everything equal but the optimizer.

The default setting is the one where sharpness-aware training is known to pay off: 40 % of the training
labels replaced by random wrong ones, trained long enough that SGD memorises them (the generalization
suite's ``sym40-long`` cell). Each method's ``rho`` is the one the suite selected on the clean validation
split (never on test; ``docs/results/demo_suite.md``). ``--setting clean`` runs the suite's clean cell.

The runs go to ``OUT/<optimizer>``; ``OUT/summary.json`` holds the table's numbers, ``OUT/demo.png`` the
plot. A rerun reuses finished runs and resumes interrupted ones *only* when their configuration equals the
requested one; a directory holding runs of other settings is refused (choose another ``--out``).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..train import EvaluateEvery, RunDirectoryError, TrainConfig, train
from ..train import run_dir as rd
from ..train.config import EPOCHS_KEY, IDENTITY_KEYS, differences
from ..train.options import option
from .demo_report import plot_demo, summarize_demo

# The suite's cells (benchmarks/generalization/plan.py): 3,000 images drawn from the training set, 1,000 of
# them held out with clean labels for validation; the full 10,000-image test set; one thread per run.
_COMMON: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "model": "resnet8",
    "train_subset": 3000,
    "val_size": 1000,
    "batch_size": 128,
    "lr": 0.05,
    "weight_decay": 5e-4,
    "crop": False,
    "sigma": 1.0,
    "lmbda": 0.6,
    "threads": 1,
    "eval_batch_size": 250,
    "device": "cpu",
    "seed": 0,
}
# rho per method: selected by the suite on the clean validation split (docs/results/demo_suite.json for
# the noisy cell, docs/results/generalization.json for the clean one; tests/commands check they agree).
SETTINGS: dict[str, dict[str, Any]] = {
    "noisy": {
        "config": {**_COMMON, "label_noise": 0.4, "noise_kind": "symmetric", "epochs": 30},
        "rho": {"sgd": None, "sam": 0.2, "fsam": 0.4},
        "test_every": 2,
    },
    "clean": {
        "config": {**_COMMON, "label_noise": 0.0, "epochs": 15},
        "rho": {"sgd": None, "sam": 0.05, "fsam": 0.05},
        "test_every": 2,
    },
}
DEMO_SETTINGS = tuple(SETTINGS)
DEMO_OPTIMIZERS = ("sgd", "sam", "fsam")  # the runs (OUT/<name>), each trained by a method on SGD:
_METHODS = {"sgd": "base", "sam": "sam", "fsam": "fsam"}
SUMMARY_NAME, PLOT_NAME = "summary.json", "demo.png"


@dataclass
class DemoOptions:
    """The options of ``fsam demo`` (its flags are derived from these declarations)."""

    # fmt: off
    setting: str = option("noisy", "noisy: 40% of the training labels wrong; clean: correct labels", choices=DEMO_SETTINGS)
    out: str = option("runs/demo", "directory for the three runs")
    epochs: int | None = option(None, f"epochs per run (default: {SETTINGS['noisy']['config']['epochs']} noisy, "
                                f"{SETTINGS['clean']['config']['epochs']} clean)", range=">= 1")
    data_dir: str | None = option(None, "where the Fashion-MNIST files are (default: search)")
    seed: int | None = option(None, "seed (default: 0)", range=">= 0")
    workers: int = option(1, "runs trained at a time, one thread each (1: each run's training time is measured "
                          "alone; 2 finishes sooner on 2 cores, but the runs then share the machine)", range=">= 1")
    quiet: bool = option(False, "no progress bars")
    # fmt: on

    def overrides(self) -> dict[str, Any]:
        """The training options this demo changes from its setting's."""
        given = {"epochs": self.epochs, "data_dir": self.data_dir, "seed": self.seed}
        return {k: v for k, v in given.items() if v is not None}


def demo_configs(setting: str, overrides: Mapping[str, Any] | None = None) -> dict[str, TrainConfig]:
    """The three runs' configurations: the setting's, with ``overrides`` (e.g. ``epochs``, ``seed``)."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown demo setting {setting!r}: choose one of {', '.join(DEMO_SETTINGS)}")
    spec = SETTINGS[setting]
    configs = {}
    for name in DEMO_OPTIMIZERS:
        values = {**spec["config"], **(overrides or {}), "method": _METHODS[name], "name": name}
        if spec["rho"][name] is not None:
            values["rho"] = spec["rho"][name]
        configs[name] = TrainConfig.from_dict(values, source=f"demo setting {setting!r}").validate()
    return configs


def _differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The settings that change a run's result (where the data lives, threads etc. do not count)."""
    changed = differences(saved, wanted, (*IDENTITY_KEYS, EPOCHS_KEY))
    return [f"{k}: {old!r} there, {new!r} now" for k, (old, new) in changed.items()]


def _plan(out: Path, configs: Mapping[str, TrainConfig], log: Callable[[str], None]) -> list[str]:
    """The runs still to train; refuses a run directory that holds a run of other settings."""
    todo = []
    for name, cfg in configs.items():
        run_dir = out / name
        if (run_dir / rd.CONFIG_FILE).is_file():
            diffs = _differences(rd.read_config_dict(run_dir), cfg.to_dict())
            if diffs:
                raise RunDirectoryError(
                    f"{run_dir} holds a demo run with other settings ({'; '.join(diffs[:4])}); "
                    f"choose another --out, or delete {out} to start over"
                )
            if rd.has_summary(run_dir):
                log(f"{name}: finished earlier with the same settings, reusing {run_dir}")
                continue
        todo.append(name)
    return todo


def _train_one(cfg: TrainConfig, run_dir: Path, test_every: int, progress: bool) -> None:
    """One run (a worker process's job): resumes a checkpoint of the same settings."""
    callbacks = [EvaluateEvery("test", test_every, cfg.epochs)]
    train(cfg, run_dir, resume=rd.has_checkpoint(run_dir), progress=progress, callbacks=callbacks)


def _train_all(
    out: Path,
    configs: Mapping[str, TrainConfig],
    todo: list[str],
    test_every: int,
    workers: int,
    progress: bool,
) -> None:
    """Train ``todo``, ``workers`` runs at a time (one thread each, as in the suite, so that the numbers
    are the suite's), the slow two-pass runs first."""
    order = sorted(todo, key=lambda n: n == "sgd")
    if workers <= 1 or len(order) <= 1:
        for name in order:
            _train_one(configs[name], out / name, test_every, progress)
        return
    context = multiprocessing.get_context("spawn")  # no forked torch state
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        jobs = [pool.submit(_train_one, configs[n], out / n, test_every, False) for n in order]
        for job in concurrent.futures.as_completed(jobs):
            job.result()  # the first failure stops the demo with its message


def run_demo(
    out: Path,
    setting: str = "noisy",
    overrides: Mapping[str, Any] | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or reuse, or resume) SGD, SAM and F-SAM under ``out``; write and return the summary.

    The summary (``out/summary.json``) holds the setting, per optimizer the final and best test accuracy,
    the fit of the noisy training labels, the training time and its ratio to SGD's, and the machine."""
    start = time.perf_counter()
    configs = demo_configs(setting, overrides)
    out.mkdir(parents=True, exist_ok=True)
    todo = _plan(out, configs, log)
    spec = SETTINGS[setting]
    cfg = configs["fsam"]
    log(
        f"demo ({setting}): {cfg.model} on {cfg.train_subset - cfg.val_size} {cfg.dataset} images"
        f"{f', {cfg.label_noise:.0%} of the labels wrong' if cfg.label_noise else ''}, {cfg.epochs} epochs, "
        f"seed {cfg.seed}; rho SAM {configs['sam'].rho:g}, F-SAM {cfg.rho:g} (chosen on validation); "
        f"{min(workers, max(1, len(todo)))} run(s) at a time"
    )
    _train_all(out, configs, todo, spec["test_every"], workers, progress)
    summary = summarize_demo(setting, configs, {n: out / n for n in DEMO_OPTIMIZERS})
    summary["total_seconds"] = time.perf_counter() - start
    summary["reused_runs"] = [n for n in DEMO_OPTIMIZERS if n not in todo]
    rd.write_json(out / SUMMARY_NAME, summary)
    summary["plot"] = plot_demo(
        summary, {n: rd.read_metrics(out / n) for n in DEMO_OPTIMIZERS}, out / PLOT_NAME
    )
    return summary
