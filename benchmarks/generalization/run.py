"""Generalization suite: SGD vs SAM vs F-SAM on real Fashion-MNIST, clean and with label noise.

Every run is an ordinary trainer run directory (``friendly_sam.train.train``) under the work directory,
one per (setting, method, hyperparameters, seed)::

    <work-dir>/runs/<setting>/<method>[_rho<r>][_lmbda<l>]/seed<s>/   config.json, metrics.jsonl, ...
    <work-dir>/logs/<same path>.log                                  the run's log

Settings: ``clean``; ``sym20`` / ``sym40`` (20 % / 40 % symmetric label noise); ``asym40`` (40 %
class-dependent noise, T-shirt<->Shirt, Pullover<->Coat, Sandal->Sneaker, Ankle boot->Sneaker).
Methods: ``sgd``; ``sam`` for each rho of the sweep; ``fsam`` for each (rho, lmbda) of the sweep; and,
in the ``--pto-settings`` only, ``pto-sam`` / ``pto-fsam``: pytorch-optimizer's SAM and FriendlySAM with
the hyperparameters of one of our grid points (``--pto-rho``, ``--pto-lmbda``), trained by the same loop.

Selection (never on the test set): per setting, SAM's rho and F-SAM's (rho, lmbda) maximise the mean
final *validation* accuracy over seeds (the validation split is held out from the training subset and
keeps its clean labels). The report gives the test accuracy of the selected configuration per seed,
mean and std, and the paired (same seed: same subset, noise, init and batch order) differences
F-SAM - SAM and SAM - SGD.

Resumable: a rerun skips finished runs, resumes interrupted ones from their last epoch checkpoint and
restarts runs that did not finish their first epoch. ``--workers 2`` runs two runs at a time, each in
its own subprocess with one torch thread. After every finished run the report in ``--out-dir`` is
regenerated from all finished runs (marked INCOMPLETE until every run is done).

Usage::

    python -m benchmarks.generalization.run --workers 2              # the full suite (resumable)
    python -m benchmarks.generalization.run --quick --workers 2      # ~10 minutes, smoke check
    python -m benchmarks.generalization.run --report-only            # rebuild the report from the runs
    python -m benchmarks.generalization.run --dry-run                # list the runs and their state
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks import benchkit
from benchmarks.generalization.plan import FULL, QUICK, SETTINGS, RunSpec, plan, run_state, train_config
from benchmarks.generalization.report import load_prior, write_report
from friendly_sam.train import EvaluateEvery, TrainConfig, TrainState, train
from friendly_sam.train import run_dir as rd

REPO = benchkit.REPO


# --------------------------------------------------------------------------- one run (subprocess)
class SparseTestEvaluation(EvaluateEvery):
    """The test set only at epoch 1, every ``every`` epochs and the last one (on this CPU the 10,000 test
    images would cost as much as training on the small subset; validation, used for selection, every
    epoch; skipped epochs record null). ``test_subset`` (smoke tests only) evaluates on the first N test
    images."""

    def __init__(self, epochs: int, every: int, test_subset: int | None) -> None:
        super().__init__("test", every, epochs)
        self.test_subset = test_subset

    def on_train_start(self, state: TrainState) -> None:
        if self.test_subset:
            first = state.data.source.take("test", torch.arange(self.test_subset))
            state.data.eval_sets["test"] = first.loader("test", state.cfg.eval_batch_size, device=state.device)


def pto_optimizer_factory(spec: RunSpec) -> Any:
    """Build pytorch-optimizer's SAM / FriendlySAM with exactly the arguments our trainer would use.

    Their classes have ``first_step``/``second_step``, so the trainer's own two-pass step drives them
    (same sequence, same BatchNorm handling as ours)."""
    from pytorch_optimizer import SAM as PtoSAM
    from pytorch_optimizer import FriendlySAM as PtoFriendlySAM

    def factory(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
        base_kw = {
            "lr": cfg.lr,
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
            "nesterov": cfg.nesterov,
        }
        if spec.method == "pto-sam":
            return PtoSAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, **base_kw)
        return PtoFriendlySAM(
            model.parameters(), torch.optim.SGD, rho=cfg.rho, sigma=cfg.sigma, lmbda=cfg.lmbda, **base_kw
        )

    return factory


def worker(spec_json: str, run_dir: str, data_dir: str | None, resume: bool) -> int:
    """Train one run in this (single-thread) process."""
    torch.set_num_threads(1)
    raw = json.loads(spec_json)
    spec, suite = RunSpec(**raw["spec"]), raw["suite"]
    cfg = train_config(spec, suite, data_dir)
    sparse = SparseTestEvaluation(cfg.epochs, suite.get("test_every") or 1, suite.get("test_subset"))
    factory = None
    if spec.method.startswith("pto-"):
        factory = pto_optimizer_factory(spec)
        # their second_step() calls the base optimizer's step(), so LambdaLR never sees step() called
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
    t0 = time.time()
    train(
        cfg,
        run_dir,
        resume=resume,
        progress=False,
        log=lambda m: print(m, flush=True),
        optimizer_factory=factory,
        callbacks=[sparse],
    )
    print(f"finished in {time.time() - t0:.0f} s", flush=True)
    return 0


# --------------------------------------------------------------------------- the suite
class Suite:
    def __init__(self, args: argparse.Namespace, suite: dict[str, Any]) -> None:
        self.args, self.suite = args, suite
        self.work = Path(args.work_dir)
        self.runs = plan(suite)
        self.prior = load_prior(args.prior, suite)
        self.lock = threading.Lock()
        self.children: set[subprocess.Popen[Any]] = set()
        self.stopping = False

    def run_dir(self, spec: RunSpec) -> Path:
        return self.work / "runs" / spec.run_id

    def log_path(self, spec: RunSpec) -> Path:
        return self.work / "logs" / f"{spec.run_id}.log"

    def check_config(self, spec: RunSpec) -> None:
        """A run directory made with other suite settings must not be mixed into this suite."""
        if not (self.run_dir(spec) / rd.CONFIG_FILE).is_file():
            return
        want = train_config(spec, self.suite, self.args.data_dir).to_dict()
        have = rd.read_config_dict(self.run_dir(spec))
        diff = sorted(k for k in want if k != "data_dir" and have.get(k) != want[k])
        if diff:
            raise SystemExit(
                f"{self.run_dir(spec)} was made with other settings ({', '.join(diff)} differ); "
                f"use another --work-dir for a different suite, or delete that directory"
            )

    def states(self) -> dict[RunSpec, str]:
        """Each run's state; ``prior`` for a run not here whose result the ``--prior`` report holds."""
        states = {s: run_state(self.run_dir(s), self.suite["epochs"]) for s in self.runs}
        records = self.prior.get("records", {})
        return {s: "prior" if st != "done" and s.run_id in records else st for s, st in states.items()}

    def execute(self, spec: RunSpec, state: str) -> bool:
        run_dir = self.run_dir(spec)
        if state == "broken":  # interrupted before its first checkpoint: nothing to keep
            shutil.rmtree(run_dir)
        cmd = [
            *benchkit.python_module(__spec__.name),
            "--_worker",
            json.dumps({"spec": asdict(spec), "suite": self.suite}),
            "--_run-dir",
            str(run_dir),
        ]
        if self.args.data_dir:
            cmd += ["--data-dir", self.args.data_dir]
        if state == "partial":
            cmd.append("--_resume")
        header = f"{state} -> {'resume' if state == 'partial' else 'start'}"
        proc = benchkit.start_worker(cmd, self.log_path(spec), header)
        with self.lock:
            self.children.add(proc)
        rc = proc.wait()
        with self.lock:
            self.children.discard(proc)
        return rc == 0

    def stop(self, *_: Any) -> None:
        self.stopping = True
        with self.lock:
            for proc in self.children:
                proc.terminate()

    def run(self) -> int:
        for spec in self.runs:
            self.check_config(spec)
        states = self.states()
        pending = [s for s in self.runs if states[s] not in ("done", "prior")]
        self._announce(states)
        if self.args.max_runs is not None:
            pending = pending[: self.args.max_runs]
        work = _Work(queue=list(pending), total=len(pending), states=states)
        signal.signal(signal.SIGTERM, self.stop)
        threads = [threading.Thread(target=self._work, args=(work,)) for _ in range(self.args.workers)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        except KeyboardInterrupt:
            self.stop()
            for t in threads:
                t.join()
            print("interrupted: rerun the same command to resume", flush=True)
            return 130
        report(self.args, self.suite, self.prior)
        if work.failures:
            print(f"{len(work.failures)} run(s) failed: {', '.join(work.failures)}", flush=True)
            return 1
        return 130 if self.stopping else 0

    def _announce(self, states: dict[RunSpec, str]) -> None:
        counts: dict[str, int] = defaultdict(int)
        for st in states.values():
            counts[st] += 1
        print(
            f"{len(self.runs)} runs: {counts['done']} done, {counts['prior']} from --prior, "
            f"{counts['partial']} to resume, "
            f"{counts['broken']} to restart, {counts['todo']} to start; {self.args.workers} worker(s)",
            flush=True,
        )

    def _work(self, work: _Work) -> None:
        """One worker thread: take the next run from the queue until it is empty or the suite stops."""
        while not self.stopping:
            with self.lock:
                if not work.queue:
                    return
                spec = work.queue.pop(0)
            t0 = time.time()
            ok = self._execute_with_retries(spec, work.states[spec])
            self._finished(work, spec, ok, time.time() - t0)

    def _execute_with_retries(self, spec: RunSpec, state: str) -> bool:
        ok = self.execute(spec, state)
        for attempt in range(self.args.retries):
            if ok or self.stopping:
                break
            time.sleep(min(30.0, 5.0 * (attempt + 1)))
            print(f"retrying {spec.run_id} ({attempt + 1}/{self.args.retries})", flush=True)
            ok = self.execute(spec, run_state(self.run_dir(spec), self.suite["epochs"]))
        return ok

    def _finished(self, work: _Work, spec: RunSpec, ok: bool, seconds: float) -> None:
        """Count and print a finished run; refresh the report after a success."""
        with self.lock:
            work.done += 1
            status = "ok" if ok else "stopped" if self.stopping else f"FAILED (see {self.log_path(spec)})"
            if not ok and not self.stopping:
                work.failures.append(spec.run_id)
            print(
                f"[{work.done}/{work.total}] {spec.run_id}: {status} in {seconds:.0f} s "
                f"(suite {time.time() - work.t_start:.0f} s)",
                flush=True,
            )
            if ok and not self.args.no_report:
                try:
                    report(self.args, self.suite, self.prior, quiet=True)
                except Exception as exc:  # the report must never stop the suite
                    print(f"report failed: {exc!r}", flush=True)


@dataclass
class _Work:
    """The runs still to execute and the tally, shared by the worker threads (under ``Suite.lock``)."""

    queue: list[RunSpec]
    total: int
    states: dict[RunSpec, str]
    failures: list[str] = field(default_factory=list)
    done: int = 0
    t_start: float = field(default_factory=time.time)


def command_line(args: argparse.Namespace) -> str:
    parts = ["python -m benchmarks.generalization.run"]
    if args.quick:
        parts.append("--quick")
    parts.append(f"--workers {args.workers}")
    for key in SUITE_FLAGS:
        v = getattr(args, key)
        if v is None:
            continue
        text = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, list) else v
        parts.append(f"--{key.replace('_', '-')} {text if text != '' else repr('')}")
    if args.work_dir != default_work_dir(args.quick):
        parts.append(f"--work-dir {args.work_dir}")
    if args.out_dir != str(REPO / "docs" / "results"):
        parts.append(f"--out-dir {args.out_dir}")
    if args.prefix != default_prefix(args.quick):
        parts.append(f"--prefix {args.prefix}")
    if args.prior:
        parts.append(f"--prior {os.path.relpath(args.prior, REPO)}")
    return " ".join(parts)


# --------------------------------------------------------------------------- command line
def report(
    args: argparse.Namespace, suite: dict[str, Any], prior: dict[str, Any], quiet: bool = False
) -> Any:
    return write_report(
        Path(args.work_dir),
        Path(args.out_dir),
        args.prefix,
        suite,
        prior,
        command=command_line(args),
        quick=args.quick,
        quiet=quiet,
    )


def default_work_dir(quick: bool) -> str:
    return str(REPO / "benchmarks" / "_work" / ("generalization-quick" if quick else "generalization"))


def default_prefix(quick: bool) -> str:
    return "generalization_quick" if quick else "generalization"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    base = [k for k in SETTINGS if not k.endswith("-long")]
    bad = [n for n in names if n not in base]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown setting(s) {bad}; choose from {', '.join(base)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small budget, 1 seed (~10 min with --workers 2)")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (one torch thread each)")
    p.add_argument(
        "--work-dir", help="where the run directories live (default benchmarks/_work/generalization[-quick])"
    )
    p.add_argument("--out-dir", default=str(REPO / "docs" / "results"), help="report directory")
    p.add_argument("--prefix", help="report file names (default generalization[_quick])")
    p.add_argument("--data-dir", help="Fashion-MNIST directory (default: the library's search order)")
    p.add_argument("--model")
    p.add_argument("--train-subset", type=int, help="images drawn from the training set (incl. validation)")
    p.add_argument("--val-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--settings", type=_names, help="comma-separated: clean,sym20,sym40,asym40")
    p.add_argument("--seeds", type=_ints, help="comma-separated seeds")
    p.add_argument("--sam-rhos", type=_floats)
    p.add_argument("--fsam-rhos", type=_floats)
    p.add_argument("--lmbdas", type=_floats)
    p.add_argument("--pto-settings", type=lambda t: _names(t) if t else [], help="'' for none")
    p.add_argument("--long-rho", type=float, help="rho of SAM and F-SAM in the long cells (default 0.2)")
    p.add_argument(
        "--long-rhos",
        type=_floats,
        help="comma-separated rhos of SAM and F-SAM in the long cells, selected on validation (instead of --long-rho)",
    )
    p.add_argument(
        "--long-settings",
        type=lambda t: _names(t) if t else [],
        help="settings with a long cell; '' for none",
    )
    p.add_argument(
        "--test-every", type=int, help="test-set evaluation every N epochs (+ epoch 1 and the last)"
    )
    p.add_argument("--test-subset", type=int, help="smoke tests only: evaluate on the first N test images")
    p.add_argument("--retries", type=int, default=1, help="retry a failed run this many times (default 1)")
    p.add_argument("--max-runs", type=int, help="run at most this many pending runs, then stop")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not rebuild the report after each run")
    p.add_argument(
        "--prior",
        help="an earlier report (.json) of the same suite: its runs count as done where their run directories "
        "are gone (the report says which, and compares the runs present in both)",
    )
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    p.add_argument("--_run-dir", help=argparse.SUPPRESS)
    p.add_argument("--_resume", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.work_dir is None:
        args.work_dir = default_work_dir(args.quick)
    if args.prefix is None:
        args.prefix = default_prefix(args.quick)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


SUITE_FLAGS = (
    "model",
    "train_subset",
    "val_size",
    "epochs",
    "test_every",
    "test_subset",
    "settings",
    "seeds",
    "sam_rhos",
    "fsam_rhos",
    "lmbdas",
    "pto_settings",
    "long_settings",
    "long_rho",
    "long_rhos",
)


def suite_from_args(args: argparse.Namespace) -> dict[str, Any]:
    suite = dict(QUICK if args.quick else FULL)
    for key in SUITE_FLAGS:
        v = getattr(args, key)
        if v is not None:
            suite[key] = v
    suite["pto_settings"] = [s for s in suite["pto_settings"] if s in suite["settings"]]
    # pytorch-optimizer runs are compared with our runs of the same grid point: keep it on the grid
    common = [r for r in suite["fsam_rhos"] if r in suite["sam_rhos"]]
    if suite["pto_rho"] not in common:
        if not common and suite["pto_settings"]:
            raise SystemExit("--sam-rhos and --fsam-rhos share no rho: the pytorch-optimizer runs need one")
        suite["pto_rho"] = max(common) if common else suite["pto_rho"]
    if suite["pto_lmbda"] not in suite["lmbdas"]:
        suite["pto_lmbda"] = suite["lmbdas"][0]
    if suite["pto_settings"]:
        try:
            import pytorch_optimizer  # noqa: F401
        except ImportError:
            print(
                "pytorch-optimizer is not installed: skipping its runs (pip install -e '.[bench]')",
                flush=True,
            )
            suite["pto_settings"] = []
    return suite


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker:
        return worker(args._worker, args._run_dir, args.data_dir, args._resume)
    suite = suite_from_args(args)
    if args.report_only:
        report(args, suite, load_prior(args.prior, suite))
        return 0
    runner = Suite(args, suite)
    if args.dry_run:
        for spec, st in runner.states().items():
            print(f"{st:8s} {spec.run_id}")
        return 0
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
