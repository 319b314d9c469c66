"""Efficient F-SAM benchmark: periodic perturbation, LookSAM reuse and sub-batch ascent vs SGD/SAM/F-SAM.

Trains the variants (plan.py: F-SAM with ``perturb_every=4``, LookSAM ``k=4``, sub-batch ascent
``f=0.25``) on the generalization suite's noisy long cell (``sym40-long``: 40 % symmetric noise, 30
epochs) and clean cell (15 epochs), rho selected on validation. SGD, SAM and F-SAM are NOT retrained:
the noisy cell's come from a generalization-suite work directory (``--baseline-dir``, the runs of
``benchmarks/generalization/run.py --long-settings sym40 --long-rhos 0.2,0.4``), the clean cell's from
the clean suite run here (``--clean-baseline``, docs/results/clean_suite.json). Time ratios come from
timing.py (``--timing``, docs/results/efficient_timing.json).

Every run is an ordinary trainer run directory under ``<work-dir>/runs/<cell>/<variant>_rho<r>_lmbda0.6/
seed<s>/``. Resumable and shareable: a run is claimed by a ``.claim`` file holding the runner's pid, so
a second runner started later (``--workers`` more) takes other runs; finished runs are skipped,
interrupted ones resume from their last epoch checkpoint.

Usage::

    python -m benchmarks.efficient.run --workers 1          # the runs (resumable), then the report
    python -m benchmarks.efficient.run --report-only        # rebuild the report from finished runs
    python -m benchmarks.efficient.run --dry-run            # list the runs and their state
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import benchkit
from benchmarks.efficient.plan import CELL_RHOS, CELLS, SEEDS, VARIANTS, VariantSpec, plan
from benchmarks.efficient.report import write_report
from benchmarks.generalization.plan import FULL, QUICK, run_state

REPO = benchkit.REPO
WORKER = "benchmarks.efficient.train_one"
DEFAULT_WORK = REPO / "benchmarks" / "_work" / "efficient"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Runner:
    def __init__(self, args: argparse.Namespace, suite: dict[str, Any], specs: list[VariantSpec]) -> None:
        self.args, self.suite, self.specs = args, suite, specs
        self.work = Path(args.work_dir)
        self.lock = threading.Lock()
        self.failures: list[str] = []

    def run_dir(self, spec: VariantSpec) -> Path:
        return self.work / "runs" / spec.run_id

    def claim(self, spec: VariantSpec) -> bool:
        """Claim a run for this process (O_EXCL file with our pid; a dead owner's claim is taken over)."""
        path = self.work / "claims" / f"{spec.run_id.replace('/', '__')}.claim"
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = int(path.read_text() or "0")
                except (OSError, ValueError):
                    owner = 0
                if owner == os.getpid() or (owner and _pid_alive(owner)):
                    return False
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return True
        return False

    def execute(self, spec: VariantSpec) -> bool:
        run_dir = self.run_dir(spec)
        state = run_state(run_dir, 0)
        if state == "done":
            return True
        if state == "broken":
            shutil.rmtree(run_dir)
        payload = json.dumps({"spec": asdict(spec), "suite": self.suite})
        cmd = [*benchkit.python_module(WORKER), payload, str(run_dir)]
        if self.args.data_dir:
            cmd += ["--data-dir", self.args.data_dir]
        if state == "partial":
            cmd.append("--resume")
        return benchkit.start_worker(cmd, self.work / "logs" / f"{spec.run_id}.log", state).wait() == 0

    def loop(self) -> None:
        for spec in self.specs:
            if run_state(self.run_dir(spec), 0) == "done" or not self.claim(spec):
                continue
            t0 = time.time()
            ok = self.execute(spec)
            print(f"{spec.run_id}: {'ok' if ok else 'FAILED'} in {time.time() - t0:.0f} s", flush=True)
            if not ok:
                with self.lock:
                    self.failures.append(spec.run_id)
            elif not self.args.no_report:
                subprocess.run(report_command(self.args), env=benchkit.src_env(), cwd=REPO, check=False)

    def run(self) -> int:
        threads = [threading.Thread(target=self.loop) for _ in range(self.args.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.failures:
            print(f"failed: {', '.join(self.failures)}", flush=True)
        return 1 if self.failures else 0


def report_command(args: argparse.Namespace) -> list[str]:
    cmd = [
        *benchkit.python_module(__spec__.name),
        "--report-only",
        "--work-dir",
        args.work_dir,
        "--out-dir",
        args.out_dir,
    ]
    for key in ("baseline_dir", "clean_baseline", "timing", "prefix", "cells", "variants", "seeds"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for key in ("noisy_rhos", "clean_rhos", "model", "epochs", "train_subset", "val_size", "test_subset"):
        if getattr(args, key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.quick:
        cmd.append("--quick")
    return cmd


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (one torch thread each)")
    p.add_argument("--work-dir", default=str(DEFAULT_WORK))
    p.add_argument("--out-dir", default=str(REPO / "docs" / "results"))
    p.add_argument(
        "--prefix", default="efficient_fsam", help="report files: <prefix>.json, <prefix>_clean.json, ..."
    )
    p.add_argument("--data-dir")
    p.add_argument(
        "--baseline-dir",
        default=str(REPO / "benchmarks" / "_work" / "demo-suite" / "runs"),
        help="generalization-suite runs/ holding the noisy cell's SGD, SAM and F-SAM runs (the demo suite's: "
        "python -m benchmarks.generalization.run --settings '' --pto-settings '' --long-settings sym40 "
        "--long-rhos 0.2,0.4 --work-dir benchmarks/_work/demo-suite --prefix demo_suite)",
    )
    p.add_argument(
        "--clean-baseline",
        default=str(REPO / "docs" / "results" / "clean_suite.json"),
        help="generalization-suite report holding the clean cell's SGD, SAM and F-SAM (the clean suite run here: "
        "python -m benchmarks.generalization.run --workers 2 --settings clean --sam-rhos 0.05 --fsam-rhos 0.05 "
        "--lmbdas 0.6 --pto-settings '' --long-settings '' --work-dir benchmarks/_work/clean-suite --prefix clean_suite)",
    )
    p.add_argument("--timing", default=str(REPO / "docs" / "results" / "efficient_timing.json"))
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--noisy-rhos", help="comma-separated rho grid of the noisy cell (default 0.4,0.2)")
    p.add_argument("--clean-rhos", help="comma-separated rho grid of the clean cell (default 0.05)")
    p.add_argument("--quick", action="store_true", help="smoke test: the suite's QUICK budget")
    p.add_argument("--model", help="smoke tests: override the model")
    p.add_argument("--epochs", type=int, help="smoke tests: override the epochs")
    p.add_argument("--test-subset", type=int, help="smoke tests: evaluate on the first N test images")
    p.add_argument("--train-subset", type=int, help="smoke tests: override the training subset")
    p.add_argument("--val-size", type=int, help="smoke tests: override the validation size")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--no-report", action="store_true")
    return p.parse_args(argv)


def suite_from_args(args: argparse.Namespace) -> dict[str, Any]:
    suite = dict(QUICK if args.quick else FULL)
    for key in ("epochs", "test_subset", "train_subset", "val_size", "model"):
        if getattr(args, key) is not None:
            suite[key] = getattr(args, key)
    return suite


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite = suite_from_args(args)
    cells = tuple(c for c in args.cells.split(",") if c)
    variants = tuple(v for v in args.variants.split(",") if v)
    seeds = tuple(int(s) for s in args.seeds.split(",") if s)
    rhos = dict(CELL_RHOS)
    for cell, text in (("sym40-long", args.noisy_rhos), ("clean", args.clean_rhos)):
        if text:
            rhos[cell] = [float(r) for r in text.split(",") if r]
    specs = plan(cells, variants, seeds, rhos)
    if args.report_only:
        write_report(args, suite, specs)
        return 0
    runner = Runner(args, suite, specs)
    if args.dry_run:
        for spec in specs:
            print(f"{run_state(runner.run_dir(spec), 0):8s} {spec.run_id}")
        return 0
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
