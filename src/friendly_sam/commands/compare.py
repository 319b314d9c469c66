"""Compare runs: one row per setting with mean and spread over seeds, and a curve plot.

Runs are grouped by their label (``--name``, else the optimizer) *and* their full setting: every option
that defines a run (its identity options: lr, rho, model, ...) except the seed, plus the epochs, plus for an
image folder the data it trained on (``classes.json``: classes, split sizes, skipped files, pixel
statistics, fingerprint). Runs of one label with different settings get separate rows, named by the
options that differ. One run is counted once: a directory given twice (also as another path to it) and a
copy of a run directory (same config and the same per-epoch records, timings measured to the microsecond
included: the run's identity) each get a note.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..files import shorten
from ..reporting import finite, mean_std, new_figure, save_figure
from ..train import run_dir as rd
from ..train.config import EPOCHS_KEY, IDENTITY_KEYS, label_of, run_setting, upgrade_saved
from ..train.run_dir import ANALYSIS_FILE, METRICS_FILE, RunDirectoryError
from .analyze import analysis_summary

_DATA_KEYS = ("classes", "counts", "skipped", "mean", "std", "fingerprint")


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run's config, per-epoch metrics (also of an unfinished run) and data identity."""
    config = rd.read_config_dict(run_dir)
    metrics = rd.read_metrics(run_dir)
    if not metrics:
        raise RunDirectoryError(f"{run_dir} has no finished epoch yet (empty {METRICS_FILE})")
    if not isinstance(upgrade_saved(config).get("method", ""), str):
        raise RunDirectoryError(f"{run_dir}: its {rd.CONFIG_FILE} names no method")
    record = rd.read_data_record(run_dir) or {}
    data = {k: record[k] for k in _DATA_KEYS if k in record}
    identity = hashlib.sha256(rd.dumps([config, metrics]).encode()).hexdigest()
    return {
        "dir": run_dir,
        "config": config,
        "metrics": metrics,
        "label": label_of(config),
        "data": data,
        "id": identity,
    }


_SETTING_KEYS = sorted({*IDENTITY_KEYS, EPOCHS_KEY} - {"seed"})


def _setting(run: dict[str, Any]) -> str:
    """The run's setting as a canonical string (the options that define a run, but the seed, and the
    epochs; old spellings upgraded, a key absent from an older config counted as its default; and the data
    an image-folder run trained on)."""
    setting = run_setting(run["config"], _SETTING_KEYS)
    return json.dumps({**setting, "data": run.get("data") or None}, sort_keys=True, default=str)


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
            keys = [*_SETTING_KEYS, "data"]
            differ = [k for k in keys if len({json.dumps(s[k], default=str) for s in settings}) > 1]
            mine = json.loads(setting)
            name = f"{label} [{', '.join(_shown(k, mine[k], settings) for k in differ)}]"
            if setting == labels[label][0]:
                notes.append(
                    f"note: runs labelled {label!r} differ in {', '.join(differ)}: one row per setting"
                )
        groups[name] = members
    return groups, notes


def _shown(key: str, value: Any, settings: list[dict[str, Any]]) -> str:
    """``key=value`` naming a row; the data by its number among the data sets seen (data #2)."""
    if key != "data":
        return f"{key}={shorten(str(value), 60)}"
    seen = list(dict.fromkeys(json.dumps(s["data"], sort_keys=True, default=str) for s in settings))
    return f"data #{seen.index(json.dumps(value, sort_keys=True, default=str)) + 1}"


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
        best = [max(finite([m.get(metric) for m in r["metrics"]]), default=math.nan) for r in members]
        rows.append(
            {
                "label": label,
                "runs": len(members),
                "seeds": [r["config"].get("seed") for r in members],
                "epochs": [r["metrics"][-1]["epoch"] for r in members],
                "final": final,
                "final_mean_std": mean_std(finite(final)),
                "best_mean_std": mean_std(finite(best)),
                "wall_time": statistics.fmean(_number(r["metrics"][-1].get("elapsed")) for r in members),
                "images_per_s": statistics.fmean(
                    _number(m.get("images_per_s")) for r in members for m in r["metrics"]
                ),
            }
        )
    return rows


def _number(value: Any) -> float:
    """A measured number, 0.0 for anything else (None, a string in a damaged file)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else 0.0


def _last_measured(metrics: list[dict[str, Any]], metric: str) -> float:
    """The metric of the last epoch that measured it (NaN if none did)."""
    values = finite([m.get(metric) for m in metrics])
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
    fig = new_figure("fsam compare --plot", figsize=(6, 4))
    ax = fig.subplots()
    groups, _ = group_runs(runs)
    for label, members in groups.items():
        length = min(len(r["metrics"]) for r in members)
        curves = [[r["metrics"][i].get(metric) for i in range(length)] for r in members]
        kept = [i for i in range(length) if len(finite([c[i] for c in curves])) == len(curves)]
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
    return save_figure(fig, path)


PLOT_FORMATS = (".png", ".pdf", ".svg")


def check_plot_path(plot_path: str | Path) -> Path:
    """The ``--plot`` file, checked before any work: a file name ending in .png, .pdf or .svg whose
    directory exists or can be made, not an existing directory."""
    path = Path(plot_path)
    if path.is_dir():
        raise ValueError(
            f"--plot {shorten(str(path))} is a directory; give a file name, e.g. --plot {path / 'compare.png'}"
        )
    if path.suffix.lower() not in PLOT_FORMATS:
        raise ValueError(
            f"--plot {shorten(str(path))}: give a file name ending in {', '.join(PLOT_FORMATS)} (e.g. {path.name}.png)"
        )
    return path


def format_analysis_table(runs: list[dict[str, Any]]) -> str:
    """Sharpness numbers from ``fsam analyze`` (``analysis.json``), mean ± std per label; '' if none."""
    groups: dict[str, list[dict[str, float | None]]] = defaultdict(list)
    for label, members in group_runs(runs)[0].items():
        for run in members:
            path = Path(run["dir"]) / ANALYSIS_FILE
            if os.path.lexists(path):
                groups[label].append(analysis_summary(rd.read_json_object(path, "analysis file")))
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
    plot_file = check_plot_path(plot_path) if plot_path else None
    unique, notes = _dedupe([Path(d) for d in run_dirs])
    runs, copies = _dedupe_copies([read_run(d) for d in unique])
    notes += copies
    notes += group_runs(runs)[1]
    table = "\n".join([*notes, ""] if notes else []) + format_table(summarize_runs(runs, metric), metric)
    sharpness = format_analysis_table(runs)
    if sharpness:
        table += "\n\n" + sharpness
    plot = plot_curves(runs, metric, plot_file) if plot_file else None
    return table, plot


def _dedupe_copies(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The runs without copies of one run (same identity), and a note for each copy."""
    seen: dict[str, dict[str, Any]] = {}
    notes = []
    for run in runs:
        if run["id"] in seen:
            notes.append(f"note: {run['dir']} is a copy of the run in {seen[run['id']]['dir']}; counted once")
        else:
            seen[run["id"]] = run
    return list(seen.values()), notes


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
