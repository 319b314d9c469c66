"""Wall time per training step of SGD, SAM, F-SAM and the efficient F-SAM variants, as ratios to SGD.

What is timed: the trainer's own step (``friendly_sam.train.step.training_step``: forward, backward, the
optimizer, twice for perturbed steps; BatchNorm handled as in training) on the benchmark's model and
batch (resnet8, batch 128 of 1x28x28 random images, 10 classes, one torch thread, CPU), each contender
built by the trainer's ``build_optimizer`` from a ``TrainConfig`` with the variant's options
(benchmarks/efficient/plan.py). One timed unit is a whole period of ``PERIOD`` consecutive steps (so
a periodic variant's perturbed and unperturbed steps are averaged in their true proportion), divided by
``PERIOD``.

Contenders run in ONE process, interleaved: every repeat runs each contender's unit once, round-robin in
a rotating order, after warm-up rounds. Reported per contender: the median step time and IQR, and
``time_ratio_to_sgd``: the median over repeats of (contender's unit / SGD's unit in the same repeat),
which cancels the slow drifts of a shared machine.

Usage::

    python -m benchmarks.efficient.timing [--repeats N] [--batch 128] [--model resnet8] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import benchkit
from benchmarks.efficient.plan import VARIANTS
from friendly_sam.models import build_model
from friendly_sam.train import TrainConfig
from friendly_sam.train.setup import build_optimizer
from friendly_sam.train.step import training_step

PERIOD = 4  # a multiple of every variant's perturb_every


def contenders() -> dict[str, TrainConfig]:
    """name -> the configuration whose optimizer and step are timed (rho/lmbda do not change the cost)."""
    base = TrainConfig(model="resnet8", lr=0.05, rho=0.2, lmbda=0.6, device="cpu")
    out = {
        "sgd": dataclasses.replace(base, method="base"),
        "sam": dataclasses.replace(base, method="sam"),
        "fsam": dataclasses.replace(base, method="fsam"),
    }
    for name, (every, between, fraction) in VARIANTS.items():
        out[name] = dataclasses.replace(
            base, method="fsam", perturb_every=every, between=between, ascent_fraction=fraction
        )
    return out


class Contender:
    def __init__(self, cfg: TrainConfig, model_name: str, batch: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg = cfg
        self.model = build_model(model_name, 10, 1)
        self.model.train()
        self.optimizer = build_optimizer(cfg, self.model)
        gen = torch.Generator().manual_seed(seed)
        self.batches = [
            (torch.randn(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(PERIOD)
        ]

    def unit(self) -> float:
        """Seconds per step over one period of PERIOD steps."""
        t0 = time.perf_counter()
        for x, y in self.batches:
            training_step(self.model, self.optimizer, x, y, ascent_fraction=self.cfg.ascent_fraction)
        return (time.perf_counter() - t0) / PERIOD


def _quartiles(values: list[float]) -> list[float] | None:
    return statistics.quantiles(values, n=4) if len(values) >= 2 else None


def measure(model_name: str, batch: int, repeats: int, warmup: int) -> dict[str, Any]:
    runners = {name: Contender(cfg, model_name, batch) for name, cfg in contenders().items()}
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no fixed neighbour
        for name in order:
            t = runners[name].unit()
            if r >= warmup:
                times[name].append(t)
    results: dict[str, Any] = {}
    for name in names:
        ts = times[name]
        q = _quartiles(ts) or [ts[0]] * 3
        ratios = [t / s for t, s in zip(ts, times["sgd"])]
        results[name] = {
            "step_s_median": statistics.median(ts),
            "step_s_iqr": [q[0], q[2]],
            "time_ratio_to_sgd": statistics.median(ratios),
            "time_ratio_iqr": [rq[0], rq[2]] if (rq := _quartiles(ratios)) else None,
            "options": {
                k: getattr(runners[name].cfg, k)
                for k in ("method", "perturb_every", "between", "ascent_fraction")
            },
        }
    return results


def _span(iqr: list[float] | None) -> str:
    return "-" if iqr is None else f"{iqr[0]:.2f}-{iqr[1]:.2f}"


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Efficient F-SAM: wall time per training step",
        "",
        f"{payload['setting']['model']}, batch {payload['setting']['batch']}, 1x28x28, "
        f"{payload['setting']['threads']} torch thread(s), {payload['setting']['repeats']} interleaved repeats "
        f"of a {PERIOD}-step period. Load average at start: {payload['machine']['load_average']}.",
        "",
        "| method | step (ms, median) | IQR (ms) | time / SGD (median of per-repeat ratios) | its IQR |",
        "|---|---|---|---|---|",
    ]
    for name, r in payload["methods"].items():
        lo, hi = r["step_s_iqr"]
        lines.append(
            f"| {name} | {1e3 * r['step_s_median']:.1f} | {1e3 * lo:.1f}-{1e3 * hi:.1f} | "
            f"{r['time_ratio_to_sgd']:.2f} | {_span(r['time_ratio_iqr'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--model", default="resnet8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=str(benchkit.REPO / "docs" / "results"))
    p.add_argument("--prefix", default="efficient_timing")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    payload: dict[str, Any] = {
        "setting": {
            "model": args.model,
            "batch": args.batch,
            "threads": args.threads,
            "repeats": args.repeats,
            "period": PERIOD,
        },
        "machine": benchkit.machine(torch_threads=args.threads),
    }
    payload["methods"] = measure(args.model, args.batch, args.repeats, args.warmup)
    md, js = benchkit.write_report(Path(args.out_dir), args.prefix, markdown(payload), payload)
    print(md.read_text())
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
