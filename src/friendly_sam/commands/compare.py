"""Compare runs: one row per label (optimizer) with mean and spread over seeds, and a curve plot."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..train import run_dir as rd
from ..train.run_dir import ANALYSIS_FILE, METRICS_FILE, RunDirectoryError
from .analyze import analysis_summary


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run's config and per-epoch metrics (also of an unfinished run)."""
    config = rd.read_config_dict(run_dir)
    metrics = rd.read_metrics(run_dir)
    if not metrics:
        raise RunDirectoryError(f"{run_dir} has no finished epoch yet (empty {METRICS_FILE})")
    return {
        "dir": run_dir,
        "config": config,
        "metrics": metrics,
        "label": config.get("name") or config["optimizer"],
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_runs(runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if metric not in run["metrics"][-1]:
            raise ValueError(
                f"metric {metric!r} not recorded in {run['dir']}; have: {', '.join(run['metrics'][-1])}"
            )
        groups[run["label"]].append(run)
    rows = []
    for label, members in groups.items():
        final = [r["metrics"][-1][metric] for r in members]
        best = [max(m[metric] for m in r["metrics"]) for r in members]
        rows.append(
            {
                "label": label,
                "runs": len(members),
                "seeds": [r["config"]["seed"] for r in members],
                "epochs": [r["metrics"][-1]["epoch"] for r in members],
                "final": final,
                "final_mean_std": mean_std(final),
                "best_mean_std": mean_std(best),
                "wall_time": statistics.fmean(r["metrics"][-1]["elapsed"] for r in members),
                "images_per_s": statistics.fmean(m["images_per_s"] for r in members for m in r["metrics"]),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], metric: str) -> str:
    lines = [
        f"| run | n | final {metric} (mean ± std) | best {metric} | per seed | epochs | time/run | img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        (fm, fs), (bm, bs) = r["final_mean_std"], r["best_mean_std"]
        per_seed = ", ".join(f"{v:.2f}" for v in r["final"])
        epochs = "/".join(sorted({str(e) for e in r["epochs"]}))
        lines.append(
            f"| {r['label']} | {r['runs']} | {fm:.2f} ± {fs:.2f} | {bm:.2f} ± {bs:.2f} | {per_seed} | "
            f"{epochs} | {r['wall_time']:.0f} s | {r['images_per_s']:.0f} |"
        )
    return "\n".join(lines)


def plot_curves(runs: list[dict[str, Any]], metric: str, path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ModuleNotFoundError(
            "plots need matplotlib: pip install matplotlib (or friendly-sam[plot])"
        ) from exc
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[run["label"]].append(run)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, members in groups.items():
        length = min(len(r["metrics"]) for r in members)
        epochs = [m["epoch"] for m in members[0]["metrics"][:length]]
        curves = [[m[metric] for m in r["metrics"][:length]] for r in members]
        means = [statistics.fmean(c[i] for c in curves) for i in range(length)]
        line = ax.plot(epochs, means, marker="o", label=f"{label} (n={len(members)})")[0]
        if len(members) > 1:
            stds = [statistics.stdev(c[i] for c in curves) for i in range(length)]
            ax.fill_between(
                epochs,
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                color=line.get_color(),
                alpha=0.2,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " ") + (" (%)" if metric.endswith("acc") else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_analysis_table(runs: list[dict[str, Any]]) -> str:
    """Sharpness numbers from ``fsam analyze`` (``analysis.json``), mean ± std per label; '' if none."""
    groups: dict[str, list[dict[str, float | None]]] = defaultdict(list)
    for run in runs:
        path = Path(run["dir"]) / ANALYSIS_FILE
        if path.is_file():
            groups[run["label"]].append(analysis_summary(json.loads(path.read_text())))
    if not groups:
        return ""
    keys = (("top_eigenvalue", "top Hessian eigenvalue"), ("hessian_trace", "Hessian trace"))
    keys += (("worst_case_increase", "worst-case loss increase (rho)"),)
    lines = [
        "| run | analysed | " + " | ".join(title for _, title in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for label, members in groups.items():
        cells = []
        for key, _ in keys:
            values = [m[key] for m in members if m[key] is not None]
            if values:
                mean, std = mean_std(values)
                cells.append(f"{mean:.4g} ± {std:.2g}" if len(values) > 1 else f"{mean:.4g}")
            else:
                cells.append("-")
        lines.append(f"| {label} | {len(members)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_runs(
    run_dirs: list[Path], plot_path: str | Path | None = None, metric: str = "test_acc"
) -> tuple[str, Path | None]:
    """Markdown table over ``run_dirs`` grouped by label, and optionally the plot; returns both."""
    runs = [read_run(Path(d)) for d in run_dirs]
    table = format_table(summarize_runs(runs, metric), metric)
    sharpness = format_analysis_table(runs)
    if sharpness:
        table += "\n\n" + sharpness
    plot = plot_curves(runs, metric, Path(plot_path)) if plot_path else None
    return table, plot
