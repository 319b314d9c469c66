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

    python benchmarks/generalization/run.py --workers 2              # the full suite (resumable)
    python benchmarks/generalization/run.py --quick --workers 2      # ~10 minutes, smoke check
    python benchmarks/generalization/run.py --report-only            # rebuild the report from the runs
    python benchmarks/generalization/run.py --dry-run                # list the runs and their state
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve()

SETTINGS: dict[str, tuple[float, str]] = {
    "clean": (0.0, "symmetric"),
    "sym20": (0.2, "symmetric"),
    "sym40": (0.4, "symmetric"),
    "asym40": (0.4, "asymmetric"),
}
# "<setting>-long": the same setting trained `long_factor` times longer, with fixed rho/lmbda (no sweep),
# to see whether longer training (SGD memorising the noisy labels) changes the comparison.
SETTINGS.update({f"{k}-long": v for k, v in list(SETTINGS.items())})
SETTING_TITLES = {
    "clean": "clean labels",
    "sym20": "20 % symmetric noise",
    "sym40": "40 % symmetric noise",
    "asym40": "40 % asymmetric noise",
}
SETTING_TITLES.update({f"{k}-long": f"{v}, long" for k, v in list(SETTING_TITLES.items())})
METHOD_TITLES = {
    "sgd": "SGD",
    "sam": "SAM",
    "fsam": "F-SAM",
    "pto-sam": "pytorch-optimizer SAM",
    "pto-fsam": "pytorch-optimizer FriendlySAM",
}

# The full suite: 4 settings x 3 seeds x (1 SGD + 2 SAM + 4 F-SAM) + 3 seeds x 2 pytorch-optimizer runs
# + 3 seeds x 3 runs of the long cell = 99 runs, sized for about 2.5 h of two single-thread workers on
# an idle 2-core CPU (see the README).
# No augmentation and a 2,000-image training set, so that SGD starts fitting the noisy labels within
# the budget (with random crops and a larger set it does not, and the settings barely differ).
FULL: dict[str, Any] = {
    "model": "resnet8",
    "train_subset": 3000,  # 2,000 train + 1,000 validation (clean labels)
    "val_size": 1000,
    "epochs": 15,
    "batch_size": 128,
    "lr": 0.05,
    "weight_decay": 5e-4,
    "crop": False,
    "seeds": [0, 1, 2],
    "settings": ["clean", "sym20", "sym40", "asym40"],
    "sam_rhos": [0.05, 0.2],
    "fsam_rhos": [0.05, 0.2],
    "lmbdas": [0.6, 0.9],
    "pto_settings": ["sym40"],
    "long_settings": ["sym40"],  # + 3 seeds x (SGD, SAM, F-SAM) at 2x the epochs, after the main grid
    "long_factor": 2,
    "long_rho": 0.2,
    "long_lmbda": 0.6,
    "pto_rho": 0.2,
    "pto_lmbda": 0.6,
    "test_every": 5,  # test-set evaluation at epoch 1, every 5th and the last (validation: every epoch)
    "test_subset": None,  # None: the full 10,000-image test set
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_subset": 1500,
    "val_size": 500,
    "epochs": 5,
    "seeds": [0],
    "settings": ["clean", "sym40"],
    "sam_rhos": [0.2],
    "fsam_rhos": [0.2],
    "lmbdas": [0.6],
    "pto_settings": ["sym40"],
    "long_settings": [],
}


# --------------------------------------------------------------------------- the runs
@dataclass(frozen=True)
class RunSpec:
    setting: str
    method: str  # sgd, sam, fsam, pto-sam, pto-fsam
    seed: int
    rho: float | None = None
    lmbda: float | None = None

    @property
    def config_name(self) -> str:
        """The hyperparameter configuration, without the seed (e.g. ``fsam_rho0.05_lmbda0.6``)."""
        name = self.method
        if self.rho is not None:
            name += f"_rho{self.rho:g}"
        if self.lmbda is not None:
            name += f"_lmbda{self.lmbda:g}"
        return name

    @property
    def run_id(self) -> str:
        return f"{self.setting}/{self.config_name}/seed{self.seed}"


def plan(suite: dict[str, Any]) -> list[RunSpec]:
    """All runs, seed-major (every setting and method gets seed 0 before any gets seed 1), so that a
    partial suite covers every cell; SGD first within a setting."""
    runs: list[RunSpec] = []
    for seed in suite["seeds"]:
        for setting in suite["settings"]:
            runs.append(RunSpec(setting, "sgd", seed))
            runs += [RunSpec(setting, "sam", seed, rho) for rho in suite["sam_rhos"]]
            runs += [
                RunSpec(setting, "fsam", seed, rho, lmbda)
                for rho in suite["fsam_rhos"]
                for lmbda in suite["lmbdas"]
            ]
            if setting in suite["pto_settings"]:
                runs.append(RunSpec(setting, "pto-sam", seed, suite["pto_rho"]))
                runs.append(RunSpec(setting, "pto-fsam", seed, suite["pto_rho"], suite["pto_lmbda"]))
    for seed in suite["seeds"]:
        for base in suite.get("long_settings", []):
            setting, rho = f"{base}-long", suite["long_rho"]
            runs.append(RunSpec(setting, "sgd", seed))
            runs.append(RunSpec(setting, "sam", seed, rho))
            runs.append(RunSpec(setting, "fsam", seed, rho, suite["long_lmbda"]))
    return runs


def all_settings(suite: dict[str, Any]) -> list[str]:
    return list(suite["settings"]) + [f"{b}-long" for b in suite.get("long_settings", [])]


def train_config(spec: RunSpec, suite: dict[str, Any], data_dir: str | None) -> Any:
    from friendly_sam.train import TrainConfig

    noise, kind = SETTINGS[spec.setting]
    base = spec.method.removeprefix("pto-")
    return TrainConfig(
        dataset="fashion-mnist",
        data_dir=data_dir,
        train_subset=suite["train_subset"],
        val_size=suite["val_size"],
        label_noise=noise,
        noise_kind=kind,
        crop=suite["crop"],
        model=suite["model"],
        optimizer=base,
        lr=suite["lr"],
        weight_decay=suite["weight_decay"],
        rho=spec.rho if spec.rho is not None else 0.05,
        lmbda=spec.lmbda if spec.lmbda is not None else 0.6,
        sigma=1.0,
        epochs=suite["epochs"] * (suite["long_factor"] if spec.setting.endswith("-long") else 1),
        batch_size=suite["batch_size"],
        seed=spec.seed,
        threads=1,
        device="cpu",
        eval_batch_size=250,  # faster than large batches on one CPU thread
        name=spec.config_name,
    ).validate()


def run_state(run_dir: Path, epochs: int) -> str:
    """``done``, ``partial`` (has a checkpoint: resume), ``broken`` (no checkpoint: restart) or ``todo``."""
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "checkpoint.pt").is_file():
        return "partial"
    if run_dir.exists():
        return "broken"
    return "todo"


def load_prior(path: str | None, suite: dict[str, Any]) -> dict[str, Any]:
    """Per-run records of an earlier report of the same suite, by run id (``{}`` without ``--prior``).

    For completing a suite whose run directories were lost (a new machine): runs are deterministic (a seed
    fixes data, noise, initialisation and batch order), and the report compares every run present both in
    the prior report and here, so a rerun shows whether the prior numbers still hold."""
    if not path:
        return {}
    try:
        prior = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--prior {path}: cannot read the report ({exc})") from exc
    if "suite" not in prior or "settings" not in prior:
        raise SystemExit(f"--prior {path}: not a report of this suite (no 'suite'/'settings' keys)")
    diff = sorted(k for k in set(suite) | set(prior["suite"]) if suite.get(k) != prior["suite"].get(k))
    if diff:
        raise SystemExit(
            f"--prior {path} is a report of another suite ({', '.join(diff)} differ): its runs cannot stand in "
            "for this suite's"
        )
    records: dict[str, Any] = {}
    for setting, out in prior["settings"].items():
        for config, cfg_out in out["sweep"].items():
            for rec in cfg_out["per_seed"]:
                records[f"{setting}/{config}/seed{rec['seed']}"] = dict(rec)
    return {"path": path, "commit": prior["meta"]["machine"].get("commit"), "records": records}


# --------------------------------------------------------------------------- one run (subprocess)
def pto_optimizer_factory(spec: RunSpec) -> Any:
    """Build pytorch-optimizer's SAM / FriendlySAM with exactly the arguments our trainer would use."""
    import torch
    from pytorch_optimizer import SAM as PtoSAM
    from pytorch_optimizer import FriendlySAM as PtoFriendlySAM

    def factory(cfg: Any, model: Any) -> Any:
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


def external_two_pass_step(model: Any, optimizer: Any, x: Any, y: Any, **kwargs: Any) -> Any:
    """:func:`friendly_sam.train.step.training_step` for a SAM-style optimizer of another library.

    Identical sequence and BatchNorm handling: clean forward/backward, ``first_step(zero_grad=True)``,
    perturbed forward/backward under :func:`frozen_bn_stats` (running statistics updated by the clean
    pass only), ``second_step(zero_grad=True)``. Returns the clean pass's loss and logits.
    """
    from torch import nn

    from friendly_sam.optim import frozen_bn_stats

    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    optimizer.first_step(zero_grad=True)
    with frozen_bn_stats(model):
        nn.functional.cross_entropy(model(x), y).backward()
    optimizer.second_step(zero_grad=True)
    return loss.detach(), logits.detach()


def sparse_test_evaluation(
    trainer: Any, cfg: Any, suite: dict[str, Any], run_dir: Path, resume: bool
) -> None:
    """Evaluate the test set only at epoch 1, every ``test_every`` epochs and the last one.

    The trainer evaluates every split after every epoch; on this CPU the 10,000 test images would cost
    as much as training on the small subset. Skipped epochs record NaN as test loss/accuracy in
    ``metrics.jsonl`` (never a stale value); the final test accuracy (the one reported) and the
    validation accuracy (every epoch, used for selection) are always measured. ``test_subset`` (smoke
    tests only) evaluates on the first N test images.
    """
    every, n_test = suite.get("test_every") or 1, suite.get("test_subset")
    start = 0
    if resume:
        import torch

        start = int(torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["epoch"])
    state: dict[str, Any] = {"epoch": start, "test": None}
    prepare, evaluate = trainer.prepare_data, trainer.evaluate

    def prepare_data(*args: Any, **kwargs: Any) -> Any:
        data = prepare(*args, **kwargs)
        if n_test:
            x, y = data.eval_sets["test"]
            data.eval_sets["test"] = (x[:n_test], y[:n_test])
        state["test"] = data.eval_sets["test"][0]
        return data

    def sparse_evaluate(model: Any, xs: Any, *args: Any, **kwargs: Any) -> tuple[float, float]:
        if xs is state["test"]:
            state["epoch"] += 1
            e = state["epoch"]
            if not (e == 1 or e % every == 0 or e == cfg.epochs):
                return math.nan, math.nan
        return evaluate(model, xs, *args, **kwargs)

    trainer.prepare_data, trainer.evaluate = prepare_data, sparse_evaluate


def worker(spec_json: str, run_dir: str, data_dir: str | None, resume: bool) -> int:
    """Train one run in this (single-thread) process."""
    import warnings

    import torch

    torch.set_num_threads(1)
    from friendly_sam.train import trainer

    raw = json.loads(spec_json)
    spec, suite = RunSpec(**raw["spec"]), raw["suite"]
    cfg = train_config(spec, suite, data_dir)
    sparse_test_evaluation(trainer, cfg, suite, Path(run_dir), resume)
    if spec.method.startswith("pto-"):
        # pytorch-optimizer's classes are not our TwoPassOptimizer: build them instead of ours and take
        # the two passes through `external_two_pass_step` (same sequence, same BatchNorm handling).
        factory = pto_optimizer_factory(spec)
        trainer.build_optimizer = factory
        trainer.training_step = external_two_pass_step
        # their second_step() calls the base optimizer's step(), so LambdaLR never sees step() called
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
    t0 = time.time()
    trainer.train(cfg, run_dir, resume=resume, progress=False, log=lambda m: print(m, flush=True))
    print(f"finished in {time.time() - t0:.0f} s", flush=True)
    return 0


# --------------------------------------------------------------------------- the suite
def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the suite process dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


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
        path = self.run_dir(spec) / "config.json"
        if not path.is_file():
            return
        want = train_config(spec, self.suite, self.args.data_dir).to_dict()
        have = json.loads(path.read_text())
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
        log = self.log_path(spec)
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            str(SCRIPT),
            "--_worker",
            json.dumps({"spec": asdict(spec), "suite": self.suite}),
            "--_run-dir",
            str(run_dir),
        ]
        if self.args.data_dir:
            cmd += ["--data-dir", self.args.data_dir]
        if state == "partial":
            cmd.append("--_resume")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
        with open(log, "a") as f:
            f.write(
                f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {state} -> {'resume' if state == 'partial' else 'start'}\n"
            )
            f.flush()
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, preexec_fn=_die_with_parent
            )
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
        counts = defaultdict(int)
        for st in states.values():
            counts[st] += 1
        print(
            f"{len(self.runs)} runs: {counts['done']} done, {counts['prior']} from --prior, "
            f"{counts['partial']} to resume, "
            f"{counts['broken']} to restart, {counts['todo']} to start; {self.args.workers} worker(s)",
            flush=True,
        )
        if self.args.max_runs is not None:
            pending = pending[: self.args.max_runs]
        queue = list(pending)
        failures: list[str] = []
        done_count = [0]
        t_start = time.time()

        def loop() -> None:
            while not self.stopping:
                with self.lock:
                    if not queue:
                        return
                    spec = queue.pop(0)
                t0 = time.time()
                ok = self.execute(spec, states[spec])
                for attempt in range(self.args.retries):
                    if ok or self.stopping:
                        break
                    time.sleep(min(30.0, 5.0 * (attempt + 1)))
                    print(f"retrying {spec.run_id} ({attempt + 1}/{self.args.retries})", flush=True)
                    ok = self.execute(spec, run_state(self.run_dir(spec), self.suite["epochs"]))
                with self.lock:
                    done_count[0] += 1
                    status = (
                        "ok" if ok else "stopped" if self.stopping else f"FAILED (see {self.log_path(spec)})"
                    )
                    if not ok and not self.stopping:
                        failures.append(spec.run_id)
                    print(
                        f"[{done_count[0]}/{len(pending)}] {spec.run_id}: {status} in {time.time() - t0:.0f} s "
                        f"(suite {time.time() - t_start:.0f} s)",
                        flush=True,
                    )
                    if ok and not self.args.no_report:
                        try:
                            write_report(self.args, self.suite, self.prior, quiet=True)
                        except Exception as exc:  # the report must never stop the suite
                            print(f"report failed: {exc!r}", flush=True)

        signal.signal(signal.SIGTERM, self.stop)
        threads = [threading.Thread(target=loop) for _ in range(self.args.workers)]
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
        write_report(self.args, self.suite, self.prior)
        if failures:
            print(f"{len(failures)} run(s) failed: {', '.join(failures)}", flush=True)
            return 1
        return 130 if self.stopping else 0


# --------------------------------------------------------------------------- results
def mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _paired(methods: dict[str, Any], by_cfg: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """Per-seed differences a - b of the selected configurations (seeds both have)."""
    if a not in methods or b not in methods:
        return None
    ra, rb = by_cfg[methods[a]["config"]], by_cfg[methods[b]["config"]]
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        return None
    diffs = [ra[s]["test_acc"] - rb[s]["test_acc"] for s in seeds]
    return {"seeds": seeds, "diffs": diffs, "mean_std": mean_std(diffs)}


def collect(work: Path, suite: dict[str, Any], prior: dict[str, Any] | None = None) -> dict[str, Any]:
    """Finished runs (and, for runs not here, the ``--prior`` report's records), selection on validation
    accuracy, per-seed test accuracies and paired differences."""
    specs = plan(suite)
    prior_records = (prior or {}).get("records", {})
    finished: dict[RunSpec, dict[str, Any]] = {}
    for spec in specs:
        d = work / "runs" / spec.run_id
        if (d / "summary.json").is_file():
            summary = json.loads((d / "summary.json").read_text())
            metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
            finished[spec] = {"summary": summary, "metrics": metrics}

    def rec(spec: RunSpec) -> dict[str, Any]:
        s, m = finished[spec]["summary"], finished[spec]["metrics"]
        noise_file = work / "runs" / spec.run_id / "label_noise.json"
        n_noisy = len(json.loads(noise_file.read_text())["indices"]) if noise_file.is_file() else 0
        return {
            "noisy_label_fraction": n_noisy / (suite["train_subset"] - suite["val_size"]),
            "seed": spec.seed,
            "test_acc": s["final_test_acc"],
            "val_acc": s["final_val_acc"],
            "best_test_acc": s["best_test_acc"],
            "final_train_acc": m[-1]["train_acc"],
            "wall_time_s": s["wall_time"],
            "images_per_s": s["mean_images_per_s"],
            "median_epoch_train_s": statistics.median(x["train_time"] for x in m),
        }

    records = {spec: rec(spec) for spec in finished}
    settings_out: dict[str, Any] = {}
    for setting in all_settings(suite):
        by_cfg: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        method_of: dict[str, str] = {}
        for spec in specs:
            if spec.setting == setting and spec in finished:
                by_cfg[spec.config_name][spec.seed] = records[spec]
            elif spec.setting == setting and spec.run_id in prior_records:
                by_cfg[spec.config_name][spec.seed] = {**prior_records[spec.run_id], "source": "prior"}
            if spec.setting == setting:
                method_of[spec.config_name] = spec.method
        sweep = {
            name: {
                "method": method_of[name],
                "n": len(runs),
                "seeds": sorted(runs),
                "val_acc_mean_std": mean_std([r["val_acc"] for r in runs.values()]),
                "test_acc_mean_std": mean_std([r["test_acc"] for r in runs.values()]),
                "per_seed": [runs[s] for s in sorted(runs)],
            }
            for name, runs in by_cfg.items()
        }
        selected: dict[str, str | None] = {}
        for method in ("sgd", "sam", "fsam"):
            cands = [n for n in sweep if sweep[n]["method"] == method]
            # Highest mean validation accuracy; ties go to the first configuration in grid order.
            order = [s.config_name for s in specs if s.setting == setting and s.seed == suite["seeds"][0]]
            cands.sort(key=lambda n: (-round(sweep[n]["val_acc_mean_std"][0], 6), order.index(n)))
            selected[method] = cands[0] if cands else None
        methods = {}
        for method, name in selected.items():
            if name is None:
                continue
            runs = by_cfg[name]
            methods[method] = {
                "config": name,
                "seeds": sorted(runs),
                "test_acc": [runs[s]["test_acc"] for s in sorted(runs)],
                "prior_seeds": [s for s in sorted(runs) if runs[s].get("source") == "prior"],
                "test_acc_mean_std": mean_std([runs[s]["test_acc"] for s in sorted(runs)]),
                "val_acc_mean_std": mean_std([runs[s]["val_acc"] for s in sorted(runs)]),
                "final_train_acc_mean": statistics.fmean(runs[s]["final_train_acc"] for s in runs),
                "clean_share_mean": 100
                * (1 - statistics.fmean(runs[s]["noisy_label_fraction"] for s in runs)),
                "best_epoch_test_acc_mean": statistics.fmean(runs[s]["best_test_acc"] for s in runs),
            }

        # F-SAM - SAM at equal rho and lmbda fixed: no extra selection freedom for F-SAM.
        equal_rho = {}
        for rho in suite["fsam_rhos"]:
            if rho not in suite["sam_rhos"]:
                continue
            sam = by_cfg.get(RunSpec(setting, "sam", 0, rho).config_name, {})
            for lmbda in suite["lmbdas"]:
                fsam = by_cfg.get(RunSpec(setting, "fsam", 0, rho, lmbda).config_name, {})
                seeds = sorted(set(sam) & set(fsam))
                if seeds:
                    diffs = [fsam[s]["test_acc"] - sam[s]["test_acc"] for s in seeds]
                    equal_rho[f"rho{rho:g}_lmbda{lmbda:g}"] = {
                        "seeds": seeds,
                        "diffs": diffs,
                        "mean_std": mean_std(diffs),
                    }
        pto = {}
        for kind, ours_method in (("pto-sam", "sam"), ("pto-fsam", "fsam")):
            lm = suite["pto_lmbda"] if kind == "pto-fsam" else None
            theirs_name = RunSpec(setting, kind, 0, suite["pto_rho"], lm).config_name
            ours_name = RunSpec(setting, ours_method, 0, suite["pto_rho"], lm).config_name
            theirs, ours = by_cfg.get(theirs_name, {}), by_cfg.get(ours_name, {})
            seeds = sorted(set(theirs) & set(ours))
            if seeds:
                pto[kind] = {
                    "ours_config": ours_name,
                    "seeds": seeds,
                    "ours_test_acc": [ours[s]["test_acc"] for s in seeds],
                    "theirs_test_acc": [theirs[s]["test_acc"] for s in seeds],
                    "ours_minus_theirs": mean_std(
                        [ours[s]["test_acc"] - theirs[s]["test_acc"] for s in seeds]
                    ),
                    # median epoch training time: robust to a slow epoch on a shared machine
                    "time_ratio_theirs_over_ours": mean_std(
                        [theirs[s]["median_epoch_train_s"] / ours[s]["median_epoch_train_s"] for s in seeds]
                    ),
                }
        settings_out[setting] = {
            "selected": selected,
            "methods": methods,
            "fsam_minus_sam": _paired(methods, by_cfg, "fsam", "sam"),
            "sam_minus_sgd": _paired(methods, by_cfg, "sam", "sgd"),
            "fsam_minus_sgd": _paired(methods, by_cfg, "fsam", "sgd"),
            "fsam_minus_sam_equal_rho": equal_rho,
            "pytorch_optimizer": pto,
            "sweep": sweep,
        }
    from_prior = [s for s in specs if s not in finished and s.run_id in prior_records]
    # Runs both rerun here and in the prior report: do the prior numbers still hold?
    rerun = [s for s in finished if s.run_id in prior_records]
    check = [
        max(
            abs(records[s][k] - prior_records[s.run_id][k])
            for k in ("test_acc", "val_acc", "final_train_acc")
        )
        for s in rerun
    ]
    cpu_time = sum(f["summary"]["wall_time"] for f in finished.values()) + sum(
        prior_records[s.run_id]["wall_time_s"] for s in from_prior
    )
    return {
        "finished": len(finished) + len(from_prior),
        "run_here": len(finished),
        "from_prior": len(from_prior),
        "prior": None
        if not prior
        else {
            "path": prior["path"],
            "commit": prior["commit"],
            "runs_used": [s.run_id for s in from_prior],
            "rerun_here": [s.run_id for s in rerun],
            "rerun_max_abs_diff": max(check) if check else None,
        },
        "total": len(specs),
        "complete": len(finished) + len(from_prior) == len(specs),
        "sum_run_wall_time_s": cpu_time,
        "settings": settings_out,
        "_finished": finished,
    }


def machine() -> dict[str, Any]:
    import torch

    from friendly_sam.train.trainer import machine_description

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except Exception:
            return "unknown"

    try:
        import importlib.metadata

        pto = importlib.metadata.version("pytorch-optimizer")
    except Exception:
        pto = None
    return {
        "cpu": machine_description()["cpu"],
        "cpu_count": os.cpu_count(),
        "threads_per_run": 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "pytorch_optimizer": pto,
        "commit": git("rev-parse", "--short", "HEAD"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _pm(ms: tuple[float, float] | list[float] | None, digits: int = 2) -> str:
    if ms is None or math.isnan(ms[0]):
        return "–"
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _signed(ms: tuple[float, float] | list[float] | None) -> str:
    if ms is None or math.isnan(ms[0]):
        return "–"
    return f"{ms[0]:+.2f} ± {ms[1]:.2f}"


def command_line(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/generalization/run.py"]
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


def _prior_lines(res: dict[str, Any]) -> list[str]:
    prior = res.get("prior")
    if not prior:
        return []
    n_check, worst = len(prior["rerun_here"]), prior["rerun_max_abs_diff"]
    check = (
        f"{n_check} of its runs were also rerun here ({', '.join(prior['rerun_here'])}); the largest "
        f"difference in test, validation or training accuracy is {worst:.2f} points"
        + (" (bit-for-bit reproduction)" if worst == 0 else "")
        if n_check
        else "none of its runs was rerun here, so the reproduction is not checked"
    )
    return [
        f"Of the {res['finished']} finished runs, {res['run_here']} ran here and {res['from_prior']} come from "
        f"`{prior['path']}`, the report of an earlier sitting (commit {prior['commit']}) whose run directories "
        f"were not kept (a new machine): their per-run results are reused, their learning curves are not in "
        f"the plot. Runs are deterministic (a seed fixes everything); {check}.",
        "",
    ]


def markdown(res: dict[str, Any], suite: dict[str, Any], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    status = (
        "complete"
        if res["complete"]
        else f"**INCOMPLETE: {res['finished']} of {res['total']} runs finished.** Cells with fewer seeds "
        "than planned, and selections made on fewer seeds, will change when the suite is resumed"
    )
    test_set = (
        f"the first {suite['test_subset']} test images (smoke test)"
        if suite.get("test_subset")
        else "the full 10,000-image test set"
    )
    test_set += (
        f" (evaluated at epoch 1, every {suite['test_every']}th and the last)"
        if suite.get("test_every", 1) > 1
        else ""
    )
    lines = [
        f"# Generalization: SGD vs SAM vs F-SAM on Fashion-MNIST{' (quick mode)' if meta['quick'] else ''}",
        "",
        f"Status: {status}.",
        "",
        f"Command: `{meta['command']}` (resumable: rerun it to continue; "
        "`--report-only` rebuilds this file from the finished runs).",
        f"Commit {m['commit']}, torch {m['torch']}, Python {m['python']}, pytorch-optimizer "
        f"{m['pytorch_optimizer'] or 'not installed'}; {m['cpu']}, {m['cpu_count']} CPUs, one torch thread "
        f"per run; report written {meta['written']}. Sum of run wall times: "
        f"{res['sum_run_wall_time_s'] / 3600:.2f} h.",
        "",
        *_prior_lines(res),
        f"Setup: {suite['model']} on a random {suite['train_subset']}-image subset of the Fashion-MNIST "
        f"training set ({suite['train_subset'] - suite['val_size']} train + {suite['val_size']} validation with "
        f"clean labels), {test_set}; {suite['epochs']} epochs, batch {suite['batch_size']}, "
        f"SGD lr {suite['lr']} momentum 0.9 weight decay {suite['weight_decay']}, cosine to 0, "
        f"{'random crop' if suite['crop'] else 'no augmentation'}; fp32. Seeds {suite['seeds']} (a seed fixes "
        "the subset, the split, the label noise, the initialisation and the batch order: runs with the same "
        "seed are paired). SAM rho in "
        f"{suite['sam_rhos']}; F-SAM rho in {suite['fsam_rhos']} x lmbda in {suite['lmbdas']}, sigma 1. "
        "Selected per setting by the mean final validation accuracy over seeds (never the test set). "
        "Accuracies are final-epoch test accuracies (%), mean ± std over seeds; differences are paired "
        "per seed (mean ± std of the per-seed differences)."
        + (
            f" Rows marked *long*: the same setting with {suite['long_factor']}x the epochs, SAM rho "
            f"{suite['long_rho']:g} and F-SAM rho {suite['long_rho']:g} / lmbda {suite['long_lmbda']:g} fixed "
            "in advance (no sweep), to check whether longer training, in which SGD memorises more of the "
            "noisy labels, changes the comparison."
            if suite.get("long_settings")
            else ""
        ),
        "",
        "| setting | SGD | SAM | F-SAM | F-SAM − SAM | SAM − SGD | selected SAM / F-SAM | n |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for setting, s in res["settings"].items():
        meths = s["methods"]
        n = "/".join(str(len(meths[k]["seeds"])) if k in meths else "0" for k in ("sgd", "sam", "fsam"))
        sel = f"{s['selected'].get('sam') or '–'} / {s['selected'].get('fsam') or '–'}"
        lines.append(
            f"| {SETTING_TITLES[setting]} | {_pm(meths.get('sgd', {}).get('test_acc_mean_std'))} | "
            f"{_pm(meths.get('sam', {}).get('test_acc_mean_std'))} | "
            f"{_pm(meths.get('fsam', {}).get('test_acc_mean_std'))} | "
            f"{_signed((s['fsam_minus_sam'] or {}).get('mean_std'))} | "
            f"{_signed((s['sam_minus_sgd'] or {}).get('mean_std'))} | {sel.replace('_', ' ')} | {n} |"
        )
    lines += ["", "Per-seed test accuracy (%) of the selected configurations:", ""]
    lines += [
        "| setting | method | config | per seed (seed: acc) | final-epoch train acc on the noisy labels "
        "| share of correct training labels |",
        "|---|---|---|---|---:|---:|",
    ]
    for setting, s in res["settings"].items():
        for method in ("sgd", "sam", "fsam"):
            if method not in s["methods"]:
                continue
            r = s["methods"][method]
            per = ", ".join(
                f"{seed}: {acc:.2f}{'*' if seed in r.get('prior_seeds', ()) else ''}"
                for seed, acc in zip(r["seeds"], r["test_acc"])
            )
            lines.append(
                f"| {setting} | {METHOD_TITLES[method]} | {r['config'].replace('_', ' ')} | {per} | "
                f"{r['final_train_acc_mean']:.1f} | {r['clean_share_mean']:.1f} |"
            )
    lines += [
        "",
        "Memorisation check: SAM-type methods are expected to help most once SGD fits the wrong labels. While "
        "the training accuracy on the noisy labels stays below the share of correct labels, the network has "
        "not (on average) started to memorise them, and there is little for a flat-minimum method to prevent. "
        "(Training accuracy is the running mean over the last epoch, in training mode.)"
        + (
            " \\* marks a seed whose result comes from the `--prior` report." if res.get("from_prior") else ""
        ),
    ]
    lines += [
        "",
        "F-SAM − SAM at equal rho (lmbda fixed, no selection advantage for F-SAM), test accuracy points:",
        "",
        "| setting | "
        + " | ".join(
            f"rho {r:g}, lmbda {lm:g}"
            for r in suite["fsam_rhos"]
            if r in suite["sam_rhos"]
            for lm in suite["lmbdas"]
        )
        + " |",
        "|---|"
        + "---:|" * sum(1 for r in suite["fsam_rhos"] if r in suite["sam_rhos"] for _ in suite["lmbdas"]),
    ]
    for setting, s in res["settings"].items():
        cells = []
        for r in suite["fsam_rhos"]:
            if r not in suite["sam_rhos"]:
                continue
            for lm in suite["lmbdas"]:
                e = s["fsam_minus_sam_equal_rho"].get(f"rho{r:g}_lmbda{lm:g}")
                cells.append(f"{_signed(e['mean_std'])} (n={len(e['seeds'])})" if e else "–")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Validation sweep (final validation accuracy %, mean ± std over seeds; test accuracy for reference):",
        "",
        "| setting | config | n | val acc | test acc |",
        "|---|---|---:|---:|---:|",
    ]
    for setting, s in res["settings"].items():
        for name, e in s["sweep"].items():
            mark = " **(selected)**" if name in s["selected"].values() else ""
            lines.append(
                f"| {setting} | {name.replace('_', ' ')}{mark} | {e['n']} | {_pm(e['val_acc_mean_std'])} | "
                f"{_pm(e['test_acc_mean_std'])} |"
            )
    pto_rows = [(st, k, v) for st, s in res["settings"].items() for k, v in s["pytorch_optimizer"].items()]
    lines += [
        "",
        f"Ours vs pytorch-optimizer {m['pytorch_optimizer'] or ''} (same loop, same settings and seeds, "
        f"rho {suite['pto_rho']:g}, F-SAM lmbda {suite['pto_lmbda']:g}): test accuracy and the ratio of "
        "median epoch training times (runs that ran at different times on a shared machine: the cost benchmark "
        "has the careful interleaved per-step timing).",
        "",
        "| setting | optimizer | ours | pytorch-optimizer | ours − theirs | time theirs / ours | n |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for setting, kind, v in pto_rows:
        lines.append(
            f"| {setting} | {METHOD_TITLES[kind.removeprefix('pto-')]} | "
            f"{_pm(mean_std(v['ours_test_acc']))} | {_pm(mean_std(v['theirs_test_acc']))} | "
            f"{_signed(v['ours_minus_theirs'])} | {_pm(v['time_ratio_theirs_over_ours'], 3)} | {len(v['seeds'])} |"
        )
    if not pto_rows:
        lines.append("| – | – | – | – | – | – | 0 |")
    if meta.get("plot"):
        lines += ["", f"![test accuracy per setting]({meta['plot']})"]
    return "\n".join(lines) + "\n"


def _has_runs(res: dict[str, Any], setting: str) -> bool:
    """Every method's selected configuration has a run here (with learning curves, unlike --prior runs)."""
    selected = res["settings"][setting]["selected"]
    here = {(spec.setting, spec.config_name) for spec in res["_finished"]}
    return all(selected.get(m) and (setting, selected[m]) in here for m in ("sgd", "sam", "fsam"))


def plot(res: dict[str, Any], suite: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    finished = res["_finished"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    colors = {"sgd": "tab:gray", "sam": "tab:blue", "fsam": "tab:red"}
    settings = list(res["settings"])
    width = 0.26
    for j, method in enumerate(("sgd", "sam", "fsam")):
        for i, setting in enumerate(settings):
            r = res["settings"][setting]["methods"].get(method)
            if not r:
                continue
            x = i + (j - 1) * width
            mean, std = r["test_acc_mean_std"]
            ax.bar(
                x,
                mean,
                width,
                yerr=std,
                color=colors[method],
                alpha=0.75,
                capsize=3,
                label=METHOD_TITLES[method] if i == 0 else None,
            )
            ax.scatter([x] * len(r["test_acc"]), r["test_acc"], color="black", s=8, zorder=3)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([SETTING_TITLES[s].replace(" noise", "\nnoise") for s in settings], fontsize=8)
    vals = [a for s in res["settings"].values() for r in s["methods"].values() for a in r["test_acc"]]
    if vals:
        ax.set_ylim(max(0.0, min(vals) - 5), min(100.0, max(vals) + 3))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("selected configuration per method (bars: mean ± std; dots: seeds)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    # curves: the noisiest symmetric setting shows memorisation (test accuracy falling late in training)
    curve_setting = next(
        (
            s
            for s in ("sym40-long", "sym40", "sym20", "asym40", "clean")
            if s in settings and _has_runs(res, s)
        ),
        settings[0],
    )
    for method in ("sgd", "sam", "fsam"):
        name = res["settings"][curve_setting]["selected"].get(method)
        if not name:
            continue
        curves = [
            f["metrics"]
            for spec, f in finished.items()
            if spec.setting == curve_setting and spec.config_name == name
        ]
        if not curves:  # all its runs came from --prior (no per-epoch metrics)
            continue
        length = min(len(c) for c in curves)
        epochs = [m["epoch"] for m in curves[0][:length]]
        for key, style in (("test_acc", "o-"), ("train_acc", ":")):
            # the test set is evaluated on some epochs only (NaN elsewhere): plot the measured ones
            points = [
                (e, statistics.fmean(c[i][key] for c in curves))
                for i, e in enumerate(epochs)
                if all(math.isfinite(c[i][key]) for c in curves)
            ]
            ax2.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                style,
                markersize=3,
                color=colors[method],
                label=f"{METHOD_TITLES[method]} {'test' if key == 'test_acc' else 'train (noisy)'}",
            )
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_title(f"{SETTING_TITLES[curve_setting]}: mean over seeds", fontsize=9)
    ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    args: argparse.Namespace, suite: dict[str, Any], prior: dict[str, Any], quiet: bool = False
) -> dict[str, Any]:
    res = collect(Path(args.work_dir), suite, prior)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{args.prefix}.png"
    made = plot(res, suite, png) if res["finished"] else None
    meta = {
        "command": command_line(args),
        "quick": args.quick,
        "machine": machine(),
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "plot": png.name if made else None,
    }
    text = markdown(res, suite, meta)
    (out / f"{args.prefix}.md").write_text(text)
    public = {k: v for k, v in res.items() if not k.startswith("_")}
    payload = {"meta": meta, "suite": suite, **public}
    (out / f"{args.prefix}.json").write_text(json.dumps(payload, indent=1) + "\n")
    if not quiet:
        print(text)
    return payload


# --------------------------------------------------------------------------- command line
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
        write_report(args, suite, load_prior(args.prior, suite))
        return 0
    runner = Suite(args, suite)
    if args.dry_run:
        for spec, st in runner.states().items():
            print(f"{st:8s} {spec.run_id}")
        return 0
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
