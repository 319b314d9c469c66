"""``summary.json``: what a finished run reports (final and best accuracies, time, machine)."""

from __future__ import annotations

from typing import Any

from .config import TrainConfig
from .run_dir import machine_description

__all__ = ["summarize"]


def summarize(cfg: TrainConfig, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The contents of ``summary.json`` for a run's per-epoch records."""
    last = metrics[-1]
    summary = {
        "label": cfg.label,
        "method": cfg.method,
        "base": cfg.base,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "label_noise": cfg.label_noise,
        "noise_kind": cfg.noise_kind,
        "final_train_loss": last["train_loss"],
        "wall_time": last["elapsed"],
        "mean_images_per_s": sum(m["images_per_s"] for m in metrics) / len(metrics),
        "machine": machine_description(),
    }
    for split in ("test", "val"):  # an image folder may have no test/ (then no test_acc)
        if f"{split}_acc" in last:
            summary[f"final_{split}_acc"] = last[f"{split}_acc"]
            summary[f"best_{split}_acc"] = _best(metrics, f"{split}_acc")
    return summary


def _best(metrics: list[dict[str, Any]], key: str) -> float | None:
    """The largest measured value of ``key`` (epochs that skipped the split hold None)."""
    values = [m[key] for m in metrics if m.get(key) is not None]
    return max(values) if values else None
