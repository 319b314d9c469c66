"""The F-SAM paper's decomposition ablation on real Fashion-MNIST, on one CPU core.

Which component of the minibatch gradient ``g`` should SAM perturb along? Four modes, same everything else:

=========  ===========================================  ==========================================
mode       perturbation direction                       flags
=========  ===========================================  ==========================================
sam        ``g`` (minibatch gradient: SAM)              ``--component minibatch``
full       ``m`` (EMA estimate of the full gradient)    ``--component full``
fsam       ``g - m`` (noise component: F-SAM)           ``--component noise``
oracle     ``g - G`` (``G``: true full-batch gradient)  ``--component noise --full-gradient oracle``
=========  ===========================================  ==========================================

each on clean labels and on 40 % symmetric label noise, several seeds. Reported: test accuracy, the top
Hessian eigenvalue of the final model (``fsam analyze``'s power iteration, on a fixed training subset),
and the training diagnostics (cosine between the EMA and the true full gradient on a fixed subset,
cos(g, m), noise/full norm ratio).

Phases (each resumable, rerun the same command after an interruption):

* ``train``: every run into ``--out/<noise>/<mode>/s<seed>``; finished runs are skipped, interrupted
  ones continue from their last checkpoint (the trainer's resume).
* ``sharpness``: top eigenvalue of every finished run (``analysis.json`` in the run dir; skipped if there).
* ``report``: ``decomposition.json``, ``decomposition.md`` and PNGs into ``--results``.

Usage (the committed results)::

    nohup python -m benchmarks.decomposition.run > runs/decomposition.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import benchkit
from friendly_sam.commands.analyze import analyze_run
from friendly_sam.reporting import new_figure, save_figure
from friendly_sam.train import TrainConfig, train
from friendly_sam.train import run_dir as rd

MODES = {
    "sam": {"component": "minibatch"},
    "full": {"component": "full"},
    "fsam": {"component": "noise"},
    "oracle": {"component": "noise", "full_gradient": "oracle"},
}
MODE_TEXT = {
    "sam": "SAM (g)",
    "full": "full only (m)",
    "fsam": "noise only, EMA (g - m)",
    "oracle": "noise only, oracle (g - G)",
}
BASE = {
    "dataset": "fashion-mnist",
    "model": "cnn_small",
    "method": "fsam",
    "train_subset": 4096,
    "test_subset": 5000,
    "epochs": 3,
    "batch_size": 128,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "rho": 0.1,
    "sigma": 1.0,
    "lmbda": 0.6,
    "crop": False,  # no augmentation: minibatch gradients and full gradients see the same objective
    "flip": False,
    "channels_last": True,  # fp32; bf16 is slow on this CPU
    "threads": 1,
    "oracle_every": 16,
    "decomposition": True,
    "decomposition_every": 16,
    "decomposition_subset": 1024,
    "checkpoint_every": 1,
}
# Supplement: how well does the EMA estimate the full gradient, for several lmbda? SAM runs (the EMA is
# tracked but unused, so the trajectory is the same for every lmbda), diagnostics every 8 steps.
EMA_LMBDAS = (0.6, 0.9, 0.95)
EMA_EXTRA = {"component": "minibatch", "decomposition_every": 8}
SHARPNESS = {"subset": 512, "eig_iters": 10, "eig_tol": 1e-3, "parts": "eigenvalue", "bn_mode": "eval"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_dirs(args: argparse.Namespace) -> list[tuple[str, float, int, Path]]:
    out = []
    for seed in args.seeds:
        for noise in args.noise:
            for mode in args.modes:
                out.append((mode, noise, seed, Path(args.out) / f"noise{noise:g}" / mode / f"s{seed}"))
    return out


def config_for(args: argparse.Namespace, mode: str, noise: float, seed: int) -> dict[str, Any]:
    cfg = {**BASE, **MODES[mode], "label_noise": noise, "seed": seed, "name": mode}
    cfg["epochs"], cfg["train_subset"] = args.epochs, args.train_subset
    if args.data_dir:
        cfg["data_dir"] = args.data_dir
    return cfg


def phase_train(args: argparse.Namespace) -> None:
    todo = run_dirs(args)
    for k, (mode, noise, seed, run_dir) in enumerate(todo, 1):
        if rd.has_summary(run_dir):
            continue
        cfg = TrainConfig.from_dict(config_for(args, mode, noise, seed)).validate()
        resume = rd.has_checkpoint(run_dir)
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # started but no epoch finished: start over
        log(f"[{k}/{len(todo)}] {mode} noise={noise:g} seed={seed} {'(resuming)' if resume else ''}")
        t0 = time.perf_counter()
        train(cfg, run_dir, resume=resume, progress=False, log=log)
        log(f"  done in {time.perf_counter() - t0:.0f} s")


def ema_run_dirs(args: argparse.Namespace) -> list[tuple[float, float, int, Path]]:
    return [
        (noise, lmbda, seed, Path(args.out) / "ema" / f"noise{noise:g}" / f"lmbda{lmbda:g}" / f"s{seed}")
        for noise in args.noise
        for lmbda in EMA_LMBDAS
        for seed in args.ema_seeds
    ]


def phase_ema(args: argparse.Namespace) -> None:
    todo = ema_run_dirs(args)
    for k, (noise, lmbda, seed, run_dir) in enumerate(todo, 1):
        if rd.has_summary(run_dir):
            continue
        values = {
            **config_for(args, "sam", noise, seed),
            **EMA_EXTRA,
            "lmbda": lmbda,
            "name": f"ema{lmbda:g}",
        }
        cfg = TrainConfig.from_dict(values).validate()
        resume = rd.has_checkpoint(run_dir)
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        log(
            f"[ema {k}/{len(todo)}] lmbda={lmbda:g} noise={noise:g} seed={seed} {'(resuming)' if resume else ''}"
        )
        t0 = time.perf_counter()
        train(cfg, run_dir, resume=resume, progress=False, log=log)
        log(f"  done in {time.perf_counter() - t0:.0f} s")


def _points(metrics: list[dict[str, Any]], key: str) -> list[Any]:
    """The ``(step, value)`` points of one diagnostic over all epochs of a run."""
    return [p for m in metrics for p in m.get(key, [])]


def _mean_value(points: list[Any]) -> float | None:
    return statistics.fmean(c for _, c in points) if points else None


def collect_ema(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for noise, lmbda, seed, run_dir in ema_run_dirs(args):
        if not rd.has_summary(run_dir):
            continue
        metrics = rd.read_metrics(run_dir)
        ema = _points(metrics, "diag_ema_full_cos_points")
        batch = _points(metrics, "diag_batch_full_cos_points")
        rows.append(
            {
                "label_noise": noise,
                "lmbda": lmbda,
                "seed": seed,
                "ema_full_cos_points": ema,
                "batch_full_cos_points": batch,
                "ema_full_cos_mean": _mean_value(ema),
                "batch_full_cos_mean": _mean_value(batch),
                "cos_g_ema": [m.get("diag_cos_g_m") for m in metrics],
            }
        )
    return rows


def phase_sharpness(args: argparse.Namespace) -> None:
    for mode, noise, seed, run_dir in run_dirs(args):
        if not rd.has_summary(run_dir) or (run_dir / rd.ANALYSIS_FILE).exists():
            continue
        log(f"sharpness {mode} noise={noise:g} seed={seed}")
        t0 = time.perf_counter()
        analyze_run(run_dir, {**SHARPNESS, "quiet": True, "threads": 1})
        log(f"  done in {time.perf_counter() - t0:.0f} s")


# --------------------------------------------------------------------------- report
def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return benchkit.mean_std(values) if values else (None, None)


def _fmt(ms: tuple[float | None, float | None], digits: int = 2) -> str:
    m, s = ms
    return "n/a" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def collect(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for mode, noise, seed, run_dir in run_dirs(args):
        if not rd.has_summary(run_dir):
            continue
        summary, metrics = rd.read_summary(run_dir), rd.read_metrics(run_dir)
        analysis_path = run_dir / rd.ANALYSIS_FILE
        eig = None
        if analysis_path.exists():
            analysis = json.loads(analysis_path.read_text())
            eig = (analysis.get("results", {}).get("eigenvalue") or {}).get("eigenvalue")
        cos_points = _points(metrics, "diag_ema_full_cos_points")
        rows.append(
            {
                "mode": mode,
                "label_noise": noise,
                "seed": seed,
                "test_acc": summary["final_test_acc"],
                "best_test_acc": summary["best_test_acc"],
                "train_loss": summary["final_train_loss"],
                "top_eigenvalue": eig,
                "ema_full_cos_points": cos_points,
                "ema_full_cos_mean": _mean_value(cos_points),
                "ema_oracle_cos_points": _points(metrics, "diag_ema_oracle_cos_points"),
                "cos_g_m": [m.get("diag_cos_g_m") for m in metrics],
                "noise_ratio": [m.get("diag_noise_ratio") for m in metrics],
                "wall_time": summary["wall_time"],
            }
        )
    groups = []
    for noise in args.noise:
        for mode in args.modes:
            rs = [r for r in rows if r["mode"] == mode and r["label_noise"] == noise]
            if not rs:
                continue
            sam = {r["seed"]: r for r in rows if r["mode"] == "sam" and r["label_noise"] == noise}
            diffs = [r["test_acc"] - sam[r["seed"]]["test_acc"] for r in rs if r["seed"] in sam]
            groups.append(
                {
                    "mode": mode,
                    "label_noise": noise,
                    "n": len(rs),
                    "seeds": [r["seed"] for r in rs],
                    "test_acc": _mean_std([r["test_acc"] for r in rs]),
                    "test_acc_minus_sam": _mean_std(diffs) if mode != "sam" else (None, None),
                    "top_eigenvalue": _mean_std([r["top_eigenvalue"] for r in rs]),
                    "ema_full_cos": _mean_std([r["ema_full_cos_mean"] for r in rs]),
                    "cos_g_m_last_epoch": _mean_std([r["cos_g_m"][-1] for r in rs]),
                    "noise_ratio_last_epoch": _mean_std([r["noise_ratio"][-1] for r in rs]),
                    "wall_time": statistics.fmean(r["wall_time"] for r in rs),
                }
            )
    return {"rows": rows, "groups": groups}


def _cosine_panels(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """A figure of cosines over training: one panel per label noise."""
    fig = new_figure("the decomposition plots", figsize=(5 * len(args.noise), 3.6), dpi=110)
    return fig, fig.subplots(1, len(args.noise), squeeze=False)[0]


def _finish_cosine_panel(ax: Any, ylabel: str, title: str) -> None:
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_ema(rows: list[dict[str, Any]], args: argparse.Namespace, results: Path) -> str:
    """The EMA's cosine with the full gradient for each lmbda, and the minibatch gradient's, on one SAM run."""
    fig, axes = _cosine_panels(args)
    for ax, noise in zip(axes, args.noise):
        rs = [r for r in rows if r["label_noise"] == noise and r["seed"] == min(args.ema_seeds)]
        for r in rs:
            pts = r["ema_full_cos_points"]
            ax.plot(
                [s for s, _ in pts], [c for _, c in pts], marker="o", ms=3, label=f"EMA, lmbda {r['lmbda']:g}"
            )
        if rs:
            pts = rs[0]["batch_full_cos_points"]
            ax.plot([s for s, _ in pts], [c for _, c in pts], "k--", marker="x", ms=4, label="minibatch g")
        _finish_cosine_panel(ax, "cosine with the full gradient", f"SAM trajectory, label noise {noise:.0%}")
    path = results / "decomposition_ema_lmbda.png"
    save_figure(fig, path)
    return path.name


COLORS = {"sam": "tab:blue", "full": "tab:red", "fsam": "tab:green", "oracle": "tab:purple"}


def plots(data: dict[str, Any], args: argparse.Namespace, results: Path) -> list[str]:
    """The two figures of the main ablation; their file names."""
    return [_plot_accuracy_and_sharpness(data, args, results), _plot_ema_cosine(data, args, results)]


def _plot_accuracy_and_sharpness(data: dict[str, Any], args: argparse.Namespace, results: Path) -> str:
    """Test accuracy and top eigenvalue per mode, every seed as a dot."""
    fig = new_figure("the decomposition plots", figsize=(5 * len(args.noise), 7), dpi=110)
    axes = fig.subplots(2, len(args.noise), squeeze=False)
    for j, noise in enumerate(args.noise):
        for i, (key, ylabel) in enumerate(
            (("test_acc", "test accuracy (%)"), ("top_eigenvalue", "top eigenvalue"))
        ):
            ax = axes[i][j]
            for x, mode in enumerate(args.modes):
                vals = [
                    r[key]
                    for r in data["rows"]
                    if r["mode"] == mode and r["label_noise"] == noise and r[key] is not None
                ]
                if vals:
                    ax.bar(x, statistics.fmean(vals), color=COLORS[mode], alpha=0.35)
                    ax.scatter([x] * len(vals), vals, color=COLORS[mode], zorder=3, s=18)
            ax.set_xticks(range(len(args.modes)), args.modes)
            ax.set_ylabel(ylabel)
            ax.set_title(f"label noise {noise:.0%}")
            if key == "test_acc":
                vals = [r["test_acc"] for r in data["rows"] if r["label_noise"] == noise]
                if vals:
                    ax.set_ylim(min(vals) - 2, max(vals) + 1)
            ax.grid(alpha=0.3, axis="y")
    path = results / "decomposition_acc_sharpness.png"
    save_figure(fig, path)
    return path.name


def _plot_ema_cosine(data: dict[str, Any], args: argparse.Namespace, results: Path) -> str:
    """The cosine between the EMA and the full gradient over training, mean over seeds per mode."""
    fig, axes = _cosine_panels(args)
    for ax, noise in zip(axes, args.noise):
        for mode in args.modes:
            rs = [r for r in data["rows"] if r["mode"] == mode and r["label_noise"] == noise]
            if not rs or not rs[0]["ema_full_cos_points"]:
                continue
            steps = [s for s, _ in rs[0]["ema_full_cos_points"]]
            curves = [
                [c for _, c in r["ema_full_cos_points"]]
                for r in rs
                if len(r["ema_full_cos_points"]) == len(steps)
            ]
            mean = [statistics.fmean(c[k] for c in curves) for k in range(len(steps))]
            ax.plot(steps, mean, marker="o", color=COLORS[mode], label=mode)
            if mode == "oracle":
                pts = [p for r in rs for p in r["ema_oracle_cos_points"]]
                if pts:
                    ax.scatter(
                        [s for s, _ in pts],
                        [c for _, c in pts],
                        marker="x",
                        color="k",
                        s=14,
                        label="oracle runs: cos(EMA, G over all train)",
                    )
        _finish_cosine_panel(ax, "cos(EMA, full gradient)", f"label noise {noise:.0%}")
    path = results / "decomposition_ema_cosine.png"
    save_figure(fig, path)
    return path.name


def _args_without_phase(argv: list[str]) -> list[str]:
    """The command line minus ``--phase X`` (the phases together are the one command that made the results)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--phase":
            skip = True
        elif not a.startswith("--phase="):
            out.append(a)
    return out


def phase_report(args: argparse.Namespace) -> None:
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    data = collect(args)
    files = plots(data, args, results)
    data["ema_supplement"] = collect_ema(args)
    if data["ema_supplement"]:
        files.append(plot_ema(data["ema_supplement"], args, results))
    meta = {
        "command": " ".join(["python -m benchmarks.decomposition.run", *_args_without_phase(sys.argv[1:])]),
        "commit": benchkit.git_commit(short=False),
        "machine": benchkit.machine(threads=1),
        "config": {**BASE, "epochs": args.epochs, "train_subset": args.train_subset},
        "modes": MODES,
        "label_noise": args.noise,
        "seeds": args.seeds,
        "sharpness": SHARPNESS,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "total_train_time_s": sum(r["wall_time"] for r in data["rows"]),
    }
    (results / "decomposition.json").write_text(json.dumps({**meta, **data}, indent=1) + "\n")
    lines = _setup_lines(args, meta) + _group_lines(data["groups"])
    if data["ema_supplement"]:
        lines += _ema_lines(args, data["ema_supplement"])
    lines += [f"![{f}]({f})" for f in files]
    lines.append("")
    notes = results / "decomposition_notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    (results / "decomposition.md").write_text("\n".join(lines) + "\n")
    log(f"report written to {results}")


def _setup_lines(args: argparse.Namespace, meta: dict[str, Any]) -> list[str]:
    """The report's title, command, machine and setup."""
    return [
        "# The decomposition ablation: which gradient component should SAM perturb along?",
        "",
        "Generated by `benchmarks/decomposition/run.py` (see its docstring and `benchmarks/decomposition/README.md`).",
        "",
        f"- Command: `{meta['command']}`",
        f"- Commit: `{meta['commit']}`; {meta['date']}",
        f"- Machine: {meta['machine']['cpu']}, 1 torch thread (shared 2-core box), torch {meta['machine']['torch']}",
        f"- Setup: Fashion-MNIST, {args.train_subset} training images (seeded subset), {BASE['test_subset']} test "
        f"images, {BASE['model']}, {args.epochs} epochs, batch {BASE['batch_size']}, SGD lr {BASE['lr']} "
        f"(cosine) momentum {BASE['momentum']} wd {BASE['weight_decay']}, rho {BASE['rho']}, sigma "
        f"{BASE['sigma']}, lmbda {BASE['lmbda']}, no augmentation, fp32 channels_last; oracle full gradient "
        f"every {BASE['oracle_every']} steps over the whole training subset; seeds {args.seeds}.",
        f"- Sharpness: top Hessian eigenvalue (power iteration, <= {SHARPNESS['eig_iters']} HVPs, eval-mode BN) "
        f"on {SHARPNESS['subset']} fixed training images (with the run's labels).",
        f"- Diagnostics: cosine between the EMA and the full gradient of {BASE['decomposition_subset']} fixed "
        f"training images every {BASE['decomposition_every']} steps; cos(g, m) and ||g - m||/||m|| averaged over "
        "each epoch (m: the estimate the run uses, the oracle in oracle runs).",
        f"- Total training wall time of the ablation runs: {meta['total_train_time_s'] / 60:.1f} min (shared machine; see the notes).",
    ]


def _group_lines(groups: list[dict[str, Any]]) -> list[str]:
    """The main table: one row per label noise and mode, mean ± std over seeds."""
    lines = [
        "",
        "| label noise | mode | n | test acc (%) | vs SAM, paired (pp) | top eigenvalue | cos(EMA, full) | "
        "cos(g, m) last epoch | noise/full norm last epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        lines.append(
            f"| {g['label_noise']:.0%} | {MODE_TEXT[g['mode']]} | {g['n']} | {_fmt(g['test_acc'])} | "
            f"{_fmt(g['test_acc_minus_sam'])} | {_fmt(g['top_eigenvalue'], 1)} | {_fmt(g['ema_full_cos'], 3)} | "
            f"{_fmt(g['cos_g_m_last_epoch'], 3)} | {_fmt(g['noise_ratio_last_epoch'], 2)} |"
        )
    return [*lines, "", "Mean ± standard deviation over seeds.", ""]


def _ema_lines(args: argparse.Namespace, supplement: list[dict[str, Any]]) -> list[str]:
    """The supplement's table: how well the EMA (of several lmbda) estimates the full gradient."""
    lines = [
        "**How well does the EMA estimate the full gradient?** SAM runs (same settings; the EMA is tracked "
        "but unused, so the trajectory is identical for every lmbda), seeds "
        f"{args.ema_seeds}; every {EMA_EXTRA['decomposition_every']} steps the cosine with the full gradient "
        f"of {BASE['decomposition_subset']} fixed training images, of the EMA and of that step's own minibatch "
        "gradient; averaged over the run.",
        "",
        "| label noise | lmbda | cos(EMA, full) | cos(minibatch g, full) | cos(g, EMA) last epoch |",
        "|---|---|---|---|---|",
    ]
    for noise in args.noise:
        for lmbda in EMA_LMBDAS:
            rs = [r for r in supplement if r["label_noise"] == noise and r["lmbda"] == lmbda]
            if rs:
                lines.append(
                    f"| {noise:.0%} | {lmbda:g} | {_fmt(_mean_std([r['ema_full_cos_mean'] for r in rs]), 3)} | "
                    f"{_fmt(_mean_std([r['batch_full_cos_mean'] for r in rs]), 3)} | "
                    f"{_fmt(_mean_std([r['cos_g_ema'][-1] for r in rs]), 3)} |"
                )
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=("all", "train", "ema", "sharpness", "report"), default="all")
    p.add_argument(
        "--out", default="runs/decomposition", help="run directories (default: runs/decomposition)"
    )
    p.add_argument("--results", default="docs/results", help="where the report goes (default: docs/results)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.4], help="label noise rates")
    p.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES))
    p.add_argument("--ema-seeds", type=int, nargs="+", default=[0], help="seeds of the EMA supplement")
    p.add_argument("--epochs", type=int, default=BASE["epochs"])
    p.add_argument("--train-subset", type=int, default=BASE["train_subset"])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    log(f"python {platform.python_version()}, torch {torch.__version__}, 1 thread")
    if args.phase in ("all", "train"):
        phase_train(args)
    if args.phase in ("all", "ema"):
        phase_ema(args)
    if args.phase in ("all", "sharpness"):
        phase_sharpness(args)
    if args.phase in ("all", "report"):
        phase_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
