"""Compare runs: one row per setting with mean and spread over seeds, and a curve plot.

Runs are grouped by their label (``--name``, else the optimizer) *and* their full setting: every option
that defines a run (its identity options: lr, rho, model, ...) except the seed, plus the epochs. Runs of one
label with different settings get separate rows, named by the options that differ. A directory given
twice (also as another path to it) is counted once, with a note.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..train import run_dir as rd
from ..train.config import EPOCHS_KEY, IDENTITY_KEYS, label_of, run_setting, upgrade_saved
from ..train.run_dir import ANALYSIS_FILE, METRICS_FILE, RunDirectoryError
from .analyze import analysis_summary


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run's config and per-epoch metrics (also of an unfinished run)."""
    config = rd.read_config_dict(run_dir)
    metrics = rd.read_metrics(run_dir)
    if not metrics:
        raise RunDirectoryError(f"{run_dir} has no finished epoch yet (empty {METRICS_FILE})")
    if not isinstance(upgrade_saved(config).get("method", ""), str):
        raise RunDirectoryError(f"{run_dir}: its {rd.CONFIG_FILE} names no method")
    return {"dir": run_dir, "config": config, "metrics": metrics, "label": label_of(config)}


_SETTING_KEYS = sorted({*IDENTITY_KEYS, EPOCHS_KEY} - {"seed"})


def _setting(run: dict[str, Any]) -> str:
    """The run's setting as a canonical string (the options that define a run, but the seed, and the
    epochs; old spellings upgraded, a key absent from an older config counted as its default)."""
    return json.dumps(run_setting(run["config"], _SETTING_KEYS), sort_keys=True, default=str)


def group_runs(runs: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Runs grouped by label and setting; a row name adds the options that differ between rows of one
    label. Returns the groups (row name -> runs, in first-seen order) and notes for the user."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_key[(run["label"], _setting(run))].append(run)
    labels: dict[str, list[str]] = defaultdict(list)
    for label, setting in by_key:
        labels[label].append(setting)
    groups, notes = {}, []
    for (label, setting), members in by_key.items():
        name = label
        if len(labels[label]) > 1:
            settings = [json.loads(s) for s in labels[label]]
            differ = [k for k in _SETTING_KEYS if len({json.dumps(s[k], default=str) for s in settings}) > 1]
            mine = json.loads(setting)
            name = f"{label} [{', '.join(f'{k}={mine[k]}' for k in differ)}]"
            if setting == labels[label][0]:
                notes.append(
                    f"note: runs labelled {label!r} differ in {', '.join(differ)}: one row per setting"
                )
        groups[name] = members
    return groups, notes


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _measured(values: list[Any]) -> list[float]:
    """The values that were measured (epochs that skipped a split hold None, or NaN in older runs)."""
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def summarize_runs(runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    for run in runs:
        if metric not in run["metrics"][-1]:
            raise ValueError(
                f"metric {metric!r} not recorded in {run['dir']}; have: {', '.join(run['metrics'][-1])}"
            )
    groups, _ = group_runs(runs)
    rows = []
    for label, members in groups.items():
        final = [_last_measured(r["metrics"], metric) for r in members]
        best = [max(_measured([m.get(metric) for m in r["metrics"]]), default=math.nan) for r in members]
        rows.append(
            {
                "label": label,
                "runs": len(members),
                "seeds": [r["config"].get("seed") for r in members],
                "epochs": [r["metrics"][-1]["epoch"] for r in members],
                "final": final,
                "final_mean_std": mean_std(_measured(final)),
                "best_mean_std": mean_std(_measured(best)),
                "wall_time": statistics.fmean(r["metrics"][-1].get("elapsed") or 0.0 for r in members),
                "images_per_s": statistics.fmean(
                    m.get("images_per_s") or 0.0 for r in members for m in r["metrics"]
                ),
            }
        )
    return rows


def _last_measured(metrics: list[dict[str, Any]], metric: str) -> float:
    """The metric of the last epoch that measured it (NaN if none did)."""
    values = _measured([m.get(metric) for m in metrics])
    return values[-1] if values else math.nan


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
    groups, _ = group_runs(runs)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, members in groups.items():
        length = min(len(r["metrics"]) for r in members)
        curves = [[r["metrics"][i].get(metric) for i in range(length)] for r in members]
        kept = [i for i in range(length) if len(_measured([c[i] for c in curves])) == len(curves)]
        epochs = [members[0]["metrics"][i]["epoch"] for i in kept]  # epochs every run measured
        means = [statistics.fmean(c[i] for c in curves) for i in kept]
        line = ax.plot(epochs, means, marker="o", label=f"{label} (n={len(members)})")[0]
        if len(members) > 1:
            stds = [statistics.stdev(c[i] for c in curves) for i in kept]
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
    for label, members in group_runs(runs)[0].items():
        for run in members:
            path = Path(run["dir"]) / ANALYSIS_FILE
            if path.is_file():
                groups[label].append(analysis_summary(rd.read_json(path, "analysis file")))
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
    """Markdown table over ``run_dirs`` grouped by label and setting, and optionally the plot; returns both.

    Notes (a directory given twice, one label with several settings) precede the table."""
    unique, notes = _dedupe([Path(d) for d in run_dirs])
    runs = [read_run(d) for d in unique]
    notes += group_runs(runs)[1]
    table = "\n".join([*notes, ""] if notes else []) + format_table(summarize_runs(runs, metric), metric)
    sharpness = format_analysis_table(runs)
    if sharpness:
        table += "\n\n" + sharpness
    plot = plot_curves(runs, metric, Path(plot_path)) if plot_path else None
    return table, plot


def _dedupe(run_dirs: list[Path]) -> tuple[list[Path], list[str]]:
    """The directories without repeats (compared as resolved paths), and a note for each repeat."""
    seen: dict[Path, Path] = {}
    notes = []
    for d in run_dirs:
        key = d.resolve()
        if key in seen:
            notes.append(f"note: {d} is the same run as {seen[key]}; counted once")
        else:
            seen[key] = d
    return list(seen.values()), notes
