"""What ``fsam demo`` shows: the summary numbers, the table, one closing sentence and the two-panel plot."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..reporting import PlottingUnavailable, finite, new_figure, save_figure
from ..train import TrainConfig
from ..train import run_dir as rd

LABELS = {"sgd": "SGD", "sam": "SAM", "fsam": "F-SAM"}


def _run_numbers(cfg: TrainConfig, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    tests = finite([m.get("test_acc") for m in metrics])
    vals = finite([m.get("val_acc") for m in metrics])
    fits = finite([m.get("noisy_fit") for m in metrics])
    return {
        "test_acc": tests[-1] if tests else None,
        "best_test_acc": max(tests) if tests else None,
        "val_acc": vals[-1] if vals else None,
        "noisy_fit": fits[-1] if fits else None,
        "train_acc": metrics[-1]["train_acc"] if metrics else None,
        "train_seconds": sum(m["train_time"] for m in metrics),
        "epochs_done": len(metrics),
        "rho": cfg.rho if cfg.method != "base" else None,
        "lmbda": cfg.lmbda if cfg.method == "fsam" else None,
    }


def summarize_demo(
    setting: str, configs: Mapping[str, TrainConfig], run_dirs: Mapping[str, Path]
) -> dict[str, Any]:
    """The demo's numbers (accuracies in percent, times in seconds) from its runs' metrics."""
    runs = {name: _run_numbers(configs[name], rd.read_metrics(run_dirs[name])) for name in configs}
    sgd_time = runs["sgd"]["train_seconds"] if "sgd" in runs else None
    for numbers in runs.values():
        numbers["time_ratio_to_sgd"] = numbers["train_seconds"] / sgd_time if sgd_time else None
    cfg = configs["sgd"]
    train_images = (cfg.train_subset or 0) - cfg.val_size
    return {
        "setting": {
            "name": setting,
            "dataset": cfg.dataset,
            "model": cfg.model,
            "label_noise": cfg.label_noise,
            "noise_kind": cfg.noise_kind if cfg.label_noise else None,
            "epochs": cfg.epochs,
            "train_images": train_images,
            "noisy_train_images": round(cfg.label_noise * train_images),
            "val_images": cfg.val_size,
            "test_images": 10000 if cfg.test_subset is None else cfg.test_subset,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "seed": cfg.seed,
            "threads_per_run": cfg.threads,
            "rho_selected_on": "clean validation split, by the generalization suite",
        },
        "runs": runs,
        "machine": rd.machine_description(),
    }


def _cell(value: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def demo_table(summary: Mapping[str, Any]) -> str:
    """The demo's table as aligned text (also valid Markdown)."""
    rows = [
        "| optimizer | rho | test acc (final) | test acc (best) | fit of wrong labels | train time | vs SGD |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in summary["runs"].items():
        rows.append(
            f"| {LABELS.get(name, name)} | {_cell(r['rho'], '{:g}')} | {_cell(r['test_acc'])} % "
            f"| {_cell(r['best_test_acc'])} % | {_cell(r['noisy_fit'], '{:.1f}')}"
            f"{' %' if r['noisy_fit'] is not None else ''} | {r['train_seconds']:.0f} s "
            f"| {_cell(r['time_ratio_to_sgd'], '{:.2f}x')} |"
        )
    return "\n".join(rows)


def demo_sentence(summary: Mapping[str, Any]) -> str:
    """One sentence saying what the numbers mean (computed from them, never canned)."""
    runs, s = summary["runs"], summary["setting"]
    sgd, sam, fsam = runs["sgd"], runs["sam"], runs["fsam"]
    if None in (sgd["test_acc"], sam["test_acc"], fsam["test_acc"]):
        return "Some runs have no test accuracy yet."
    gain_sam, gain_fsam = sam["test_acc"] - sgd["test_acc"], fsam["test_acc"] - sgd["test_acc"]
    ratio = max(sam["time_ratio_to_sgd"] or 0.0, fsam["time_ratio_to_sgd"] or 0.0)
    better = "above" if min(gain_sam, gain_fsam) >= 0 else "relative to"
    head = (
        f"With {s['label_noise']:.0%} of the training labels wrong, SGD fitted {sgd['noisy_fit']:.0f} % of the "
        f"wrong labels and SAM / F-SAM {sam['noisy_fit']:.0f} % / {fsam['noisy_fit']:.0f} %"
        if s["label_noise"] and sgd["noisy_fit"] is not None
        else "On clean labels"
    )
    return (
        f"{head}; SAM ends {gain_sam:+.2f} and F-SAM {gain_fsam:+.2f} test-accuracy points {better} SGD "
        f"(F-SAM {fsam['test_acc'] - sam['test_acc']:+.2f} vs SAM) for about {ratio:.1f}x SGD's training time. "
        f"One seed: the README compares it with the mean over 3 seeds."
    )


def _curve(metrics: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(m["epoch"], m.get(key)) for m in metrics]
    kept = [(e, float(v)) for e, v in points if v is not None and math.isfinite(float(v))]
    return [e for e, _ in kept], [v for _, v in kept]


def plot_demo(
    summary: Mapping[str, Any], metrics: Mapping[str, list[dict[str, Any]]], path: Path
) -> Path | None:
    """Two panels: test accuracy per evaluated epoch; fit of the wrong labels per epoch (with label noise).
    ``None`` when matplotlib is missing (the table and summary are still written)."""
    noisy = bool(summary["setting"]["label_noise"])
    try:
        fig = new_figure("the demo's plot", figsize=(11 if noisy else 6, 4))
    except PlottingUnavailable:
        return None
    from matplotlib.ticker import MaxNLocator  # matplotlib is there: new_figure imported it

    axes = fig.subplots(1, 2 if noisy else 1, squeeze=False)
    panels = [("test_acc", "test accuracy (%)")] + (
        [("noisy_fit", "wrong training labels fitted (%)")] if noisy else []
    )
    for ax, (key, ylabel) in zip(axes[0], panels):
        for name, records in metrics.items():
            epochs, values = _curve(records, key)
            rho = summary["runs"][name]["rho"]
            label = LABELS.get(name, name) + (f" (rho {rho:g})" if rho is not None else "")
            ax.plot(epochs, values, marker="o" if key == "test_acc" else None, ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    s = summary["setting"]
    noise = f", {s['label_noise']:.0%} wrong labels" if noisy else ", clean labels"
    fig.suptitle(f"{s['model']} on {s['train_images']:,} {s['dataset']} images{noise}, seed {s['seed']}")
    return save_figure(fig, path)
