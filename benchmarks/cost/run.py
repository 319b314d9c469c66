"""Cost of a real training step: SGD vs SAM vs F-SAM (ours and pytorch-optimizer's), time and memory.

What is timed: one whole training iteration (forward + backward + optimizer; for the two-pass
optimizers both passes) on a fixed random batch, per contender:

* ``sgd``: ``torch.optim.SGD`` through :func:`friendly_sam.train.step.training_step`;
* ``sam`` / ``fsam``: our :class:`SAM` / :class:`FriendlySAM` through the same ``training_step``
  (clean pass, ``first_step``, perturbed pass with BatchNorm statistics frozen, ``second_step``);
* ``pto-sam`` / ``pto-fsam``: pytorch-optimizer's ``SAM`` / ``FriendlySAM`` through the identical
  sequence (``benchmarks/generalization/run.py: external_two_pass_step``; same BatchNorm handling).

Every contender has its own copy of the same initial model and uses SGD lr 0.05, momentum 0.9, weight
decay 5e-4 (SAM rho 0.05; F-SAM rho 0.05, sigma 1, lmbda 0.6). All contenders run in ONE process,
interleaved round-robin with a rotating start, after warm-up rounds; reported are the median time per
step, the IQR, the ratio of medians to SGD, and the median of per-round ratios (each round's time over
the same round's SGD time: robust to load drifting on a shared machine).

Memory: every contender also runs alone in a fresh subprocess: baseline = resident set size (RSS,
``/proc/self/statm``) after building model, optimizer and batch; peak = the process's own
high-water mark (``VmHWM``, reset to the current RSS before the first step; ``getrusage`` would report
the parent's peak, inherited across fork/exec) over ``--memory-steps`` steps. *Peak - baseline* is
what training adds (activations of forward/backward, gradients, optimizer state, temporaries), as the OS sees it (the allocator may keep
freed memory). For the optimizer's own buffers in isolation see the optimizer-only table (from
``benchmarks/optimizer_step.py``), included when ``docs/results/optimizer_step.json`` exists.

Usage::

    python -m benchmarks.cost.run                 # ResNet-18 32x32x3 batch 32 and ResNet-8 28x28x1 batch 128
    python -m benchmarks.cost.run --quick         # tiny smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import benchkit
from friendly_sam.models import build_model
from friendly_sam.optim import SAM, FriendlySAM
from friendly_sam.train.step import training_step

REPO = benchkit.REPO
SGD_KW = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
SAM_KW = {"rho": 0.05}
FSAM_KW = {"rho": 0.05, "sigma": 1.0, "lmbda": 0.6}
CONTENDERS = ("sgd", "sam", "fsam", "pto-sam", "pto-fsam")
TITLES = {
    "sgd": "SGD",
    "sam": "SAM (ours)",
    "fsam": "F-SAM (ours)",
    "pto-sam": "SAM (pytorch-optimizer)",
    "pto-fsam": "FriendlySAM (pytorch-optimizer)",
}
# (name, model, image size, channels, batch)
FULL_WORKLOADS = [
    ("resnet18-32x32x3-b32", "resnet18", 32, 3, 32),
    ("resnet8-28x28x1-b128", "resnet8", 28, 1, 128),
]
QUICK_WORKLOADS = [("cnn_small-28x28x1-b16", "cnn_small", 28, 1, 16)]


def have_pto() -> bool:
    return importlib.util.find_spec("pytorch_optimizer") is not None


def make_contender(name: str, model_name: str, size: int, channels: int, batch: int, seed: int = 0) -> Any:
    """(model, optimizer, step function, x, y) with the same initial weights and batch for every name."""
    torch.manual_seed(seed)
    model = build_model(model_name, 10, channels)
    model.train()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, channels, size, size, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    params = model.parameters()
    step = training_step
    if name == "sgd":
        opt: Any = torch.optim.SGD(params, **SGD_KW)
    elif name == "sam":
        opt = SAM(params, torch.optim.SGD, **SAM_KW, **SGD_KW)
    elif name == "fsam":
        opt = FriendlySAM(params, torch.optim.SGD, **FSAM_KW, **SGD_KW)
    else:
        from pytorch_optimizer import SAM as PtoSAM
        from pytorch_optimizer import FriendlySAM as PtoFriendlySAM

        cls, kw = (PtoSAM, SAM_KW) if name == "pto-sam" else (PtoFriendlySAM, FSAM_KW)
        opt = cls(params, torch.optim.SGD, **kw, **SGD_KW)  # first_step/second_step: the same two-pass step
    return model, opt, step, x, y


def timed_step(c: tuple[Any, ...]) -> float:
    model, opt, step, x, y = c
    t0 = time.perf_counter()
    step(model, opt, x, y)
    return time.perf_counter() - t0


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, med, q3


def time_workload(
    workload: tuple[str, str, int, int, int], names: list[str], warmup: int, repeats: int
) -> dict:
    label, model_name, size, channels, batch = workload
    contenders = {n: make_contender(n, model_name, size, channels, batch) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:  # rotating start
            t = timed_step(contenders[n])
            if r >= warmup:
                times[n].append(t)
    sgd = times["sgd"]
    rows = []
    for n in names:
        q1, med, q3 = quartiles(times[n])
        per_round = [a / b for a, b in zip(times[n], sgd)]
        rows.append(
            {
                "name": n,
                "title": TITLES[n],
                "median_ms": 1e3 * med,
                "iqr_ms": 1e3 * (q3 - q1),
                "ratio_to_sgd": med / statistics.median(sgd),
                "paired_ratio_to_sgd": statistics.median(per_round),
                "images_per_s": batch / med,
                "times_ms": [1e3 * t for t in times[n]],
            }
        )
    num_params = sum(p.numel() for p in contenders["sgd"][0].parameters())
    tensors = tensor_memory(contenders)
    return {
        "tensor_memory": tensors,
        "param_mib": 4 * num_params / 2**20,
        "workload": label,
        "model": model_name,
        "input": [channels, size, size],
        "batch": batch,
        "num_params": num_params,
        "rows": rows,
    }


def tensor_memory(contenders: dict[str, tuple[Any, ...]]) -> dict[str, dict[str, float]]:
    """Exact tensor accounting after the timed steps (steady state): held + in-step peak."""
    out = {}
    for n, c in contenders.items():
        held = benchkit.held_bytes(c[1], list(c[0].parameters()))
        peak = benchkit.step_alloc_peak(functools.partial(timed_step, c))
        out[n] = {"held_mib": held / 2**20, "step_peak_mib": peak / 2**20, "total_mib": (held + peak) / 2**20}
    for n in out:
        out[n]["total_ratio_to_sgd"] = out[n]["total_mib"] / out["sgd"]["total_mib"]
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    """Peak RSS of this process image (``VmHWM``). Unlike ``getrusage().ru_maxrss``, which keeps the
    parent's high-water mark across fork/exec, it belongs to this process's own memory."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_worker(spec: str) -> None:
    """Subprocess: build one contender, run its steps, print baseline and peak RSS as JSON."""
    cfg = json.loads(spec)
    torch.set_num_threads(cfg["threads"])
    c = make_contender(cfg["name"], cfg["model"], cfg["size"], cfg["channels"], cfg["batch"])
    baseline = _rss_bytes()
    reset = _reset_hwm()
    max_before = _hwm_bytes()
    for _ in range(cfg["steps"]):
        timed_step(c)
    peak = _hwm_bytes()
    # peak == max_before would mean the steps never exceeded an earlier high-water mark (then the
    # delta is only a lower bound); the report flags it.
    print(json.dumps({"baseline": baseline, "peak": peak, "max_rss_before": max_before, "hwm_reset": reset}))


def measure_memory(
    workload: tuple[str, str, int, int, int], names: list[str], steps: int, threads: int
) -> dict:
    _, model_name, size, channels, batch = workload
    out = {}
    env = benchkit.src_env(OMP_NUM_THREADS=str(threads))
    for n in names:
        spec = {
            "name": n,
            "model": model_name,
            "size": size,
            "channels": channels,
            "batch": batch,
            "steps": steps,
            "threads": threads,
        }
        proc = subprocess.run(
            [*benchkit.python_module(__spec__.name), "--_memory", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory run of {n} failed:\n{proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        out[n] = {
            "baseline_mib": r["baseline"] / 2**20,
            "peak_mib": r["peak"] / 2**20,
            "delta_mib": (r["peak"] - r["baseline"]) / 2**20,
            "peak_set_by_steps": r["peak"] > r["max_rss_before"],
        }
    sgd = out["sgd"]["delta_mib"]
    for n in names:
        out[n]["delta_ratio_to_sgd"] = out[n]["delta_mib"] / sgd if sgd > 0 else float("nan")
    return out


def optimizer_only(path: Path) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return [
        {k: r.get(k) for k in ("name", "median_ms", "ratio_to_sgd", "extra_buffers", "peak_buffers")}
        for r in data.get("results", [])
    ] or None


def command_line(args: argparse.Namespace) -> str:
    parts = ["python -m benchmarks.cost.run"]
    if args.quick:
        parts.append("--quick")
    for key in ("repeats", "warmup", "threads", "memory_steps"):
        parts.append(f"--{key.replace('_', '-')} {getattr(args, key)}")
    if args.no_memory:
        parts.append("--no-memory")
    if args.contenders:
        parts.append(f"--contenders {args.contenders}")
    return " ".join(parts)


def _workload_lines(w: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """One workload's table, ratios and memory notes."""
    mem = w.get("memory")
    lines = _workload_table(w) + _ratio_lines({r["name"]: r for r in w["rows"]})
    lines += ["", TENSOR_MEMORY_NOTE, *(_rss_lines(mem, cfg) if mem else []), ""]
    return lines


TENSOR_MEMORY_NOTE = (
    "Tensor memory (exact, in this process after the timed steps): *held* = tensors the optimizer keeps "
    "between steps beyond parameters and gradients (momentum; ours also the saved weights, F-SAM the EMA; "
    "pytorch-optimizer keeps its weight copy only within a step); *step peak* = peak of tensor bytes "
    "allocated within one step (torch.profiler memory events: activations, gradients, temporaries, "
    "per-step copies); parameters themselves are not counted."
)


def _workload_table(w: dict[str, Any]) -> list[str]:
    """The workload's heading and its table: one row per contender."""
    mem, tm = w.get("memory"), w["tensor_memory"]
    lines = [
        f"## {w['model']}, input {'x'.join(map(str, w['input']))}, batch {w['batch']} "
        f"({w['num_params']:,} parameters = {w['param_mib']:.1f} MiB)",
        "",
        "| optimizer | median ms/step | IQR ms | img/s | ratio to SGD | paired ratio | held MiB | "
        "step peak MiB | held + peak (ratio to SGD) |" + (" RSS delta MiB (ratio) |" if mem else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if mem else ""),
    ]
    for r in w["rows"]:
        t = tm[r["name"]]
        row = (
            f"| {r['title']} | {r['median_ms']:.1f} | {r['iqr_ms']:.1f} | {r['images_per_s']:.0f} | "
            f"{r['ratio_to_sgd']:.3f} | {r['paired_ratio_to_sgd']:.3f} | {t['held_mib']:.1f} | "
            f"{t['step_peak_mib']:.1f} | {t['total_mib']:.1f} ({t['total_ratio_to_sgd']:.2f}) |"
        )
        if mem:
            mm = mem[r["name"]]
            row += f" {mm['delta_mib']:.1f} ({mm['delta_ratio_to_sgd']:.2f}) |"
        lines.append(row)
    return lines


def _ratio_lines(rows: dict[str, Any]) -> list[str]:
    """The paired ratios that answer the benchmark's questions (F-SAM vs SAM, ours vs pytorch-optimizer)."""
    summary = []
    if "sam" in rows and "fsam" in rows:
        ratio = _paired(rows, "fsam", "sam")
        summary.append(
            f"F-SAM / SAM (ours, paired) = {ratio:.3f} "
            f"(target within 3 %: {'met' if abs(ratio - 1) <= 0.03 else 'MISSED'})"
        )
        summary.append(f"SAM / SGD (paired) = {rows['sam']['paired_ratio_to_sgd']:.3f} (two passes: ~2)")
    for ours, theirs in (("sam", "pto-sam"), ("fsam", "pto-fsam")):
        if ours in rows and theirs in rows:
            summary.append(f"{TITLES[theirs]} / {TITLES[ours]} (paired) = {_paired(rows, theirs, ours):.3f}")
    return ["", "; ".join(summary) + "."] if summary else []


def _rss_lines(mem: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """How the RSS deltas were measured, the baselines, and a warning where a delta is only a lower bound."""
    warn = all(v["peak_set_by_steps"] for v in mem.values())
    return [
        "",
        "RSS delta (OS view, allocator caching included): each contender alone in a fresh process; max RSS "
        f"after {cfg['memory_steps']} steps (`VmHWM`, reset to the current RSS before the first step) minus RSS after "
        "building model, optimizer and batch. Baselines "
        "MiB: "
        + ", ".join(f"{TITLES[n]} {v['baseline_mib']:.0f}" for n, v in mem.items())
        + "."
        + (
            ""
            if warn
            else " WARNING: for some contender the max RSS was set before the steps (its delta "
            "is a lower bound)."
        ),
    ]


def _optimizer_only_lines(res: dict[str, Any]) -> list[str]:
    """The optimizer-only table borrowed from optimizer_step.json, if present."""
    lines: list[str] = []
    if res.get("optimizer_only"):
        lines += [
            "## Optimizer only (from `benchmarks/optimizer_step.py`, docs/results/optimizer_step.md)",
            "",
            "Gradients given, no forward/backward; CIFAR ResNet-18 parameter set. Buffers in parameter-sized units.",
            "",
            "| contender | median ms | ratio to SGD | extra buffers | peak buffers |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in res["optimizer_only"]:

            def f(v: Any, fmt: str) -> str:
                return format(v, fmt) if isinstance(v, (int, float)) else "–"

            lines.append(
                f"| {r['name']} | {f(r['median_ms'], '.2f')} | {f(r['ratio_to_sgd'], '.2f')} | "
                f"{f(r['extra_buffers'], '.2f')} | {f(r['peak_buffers'], '.2f')} |"
            )
        lines.append("")
    return lines


def markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        f"# Training-step cost: SGD vs SAM vs F-SAM{' (quick mode)' if cfg['quick'] else ''}",
        "",
        f"Command: `{res['command']}`.",
        f"Commit {m['commit']}, torch {m['torch']} with {m['torch_threads']} thread(s), Python {m['python']}, "
        f"pytorch-optimizer {m['pytorch_optimizer'] or 'not installed'}; {m['cpu']}, {m['cpu_count']} CPUs; "
        f"load average at start {_load(res.get('load_average_start'))}, at end {_load(m['load_average'])} "
        "(a shared machine: other jobs ran at the same time).",
        "",
        "One training iteration = forward + backward + optimizer (two passes for SAM/F-SAM, the second with "
        "BatchNorm statistics frozen), fp32, on a fixed random batch; all contenders in one process, "
        f"interleaved round-robin with a rotating start, {cfg['warmup']} warm-up rounds, {cfg['repeats']} "
        "timed rounds. *Ratio* = median / SGD's median; *paired* = median over rounds of (time / same "
        "round's SGD time). SGD lr 0.05 momentum 0.9 wd 5e-4; SAM rho 0.05; F-SAM rho 0.05 sigma 1 lmbda 0.6.",
        "",
    ]
    for w in res["workloads"]:
        lines += _workload_lines(w, cfg)
    lines += _optimizer_only_lines(res)
    if res["notes"]:
        lines += ["Notes:"] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def _paired(rows: dict[str, Any], a: str, b: str) -> float:
    """Median over rounds of a's time over b's time in the same round."""
    return statistics.median(x / y for x, y in zip(rows[a]["times_ms"], rows[b]["times_ms"]))


def _load(load: list[float] | None) -> str:
    return "/".join(f"{x:.1f}" for x in load) if load else "n/a"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model and few repeats (smoke test)")
    p.add_argument("--repeats", type=int, help="timed rounds (default 30; quick 3)")
    p.add_argument("--warmup", type=int, help="warm-up rounds (default 3; quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--memory-steps", type=int, help="steps per memory subprocess (default 5; quick 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the RSS subprocesses")
    p.add_argument("--contenders", help=f"comma-separated subset of {','.join(CONTENDERS)} (sgd always runs)")
    p.add_argument("--out-dir", type=Path, default=REPO / "docs" / "results")
    p.add_argument("--prefix", help="output file names (default cost, quick: cost_quick)")
    p.add_argument(
        "--optimizer-step-json", type=Path, default=REPO / "docs" / "results" / "optimizer_step.json"
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="re-render the report from its JSON (refreshing the optimizer-only table); measure nothing",
    )
    p.add_argument("--_memory", help=argparse.SUPPRESS)
    return p


def _contenders(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The contenders to run (sgd always; pytorch-optimizer's only where it is installed) and the notes."""
    wanted = CONTENDERS if not args.contenders else ["sgd", *args.contenders.split(",")]
    unknown = sorted(set(wanted) - set(CONTENDERS))
    if unknown:
        p.error(f"--contenders: unknown {unknown}; choose from {', '.join(CONTENDERS)}")
    names = [n for n in CONTENDERS if n in wanted and (have_pto() or not n.startswith("pto-"))]
    notes = []
    if not have_pto():
        notes.append(
            "pytorch-optimizer is not installed: its contenders were skipped (pip install -e '.[bench]')."
        )
    return names, notes


def _measure(args: argparse.Namespace, names: list[str], notes: list[str]) -> dict[str, Any]:
    """Time (and, unless --no-memory, measure the memory of) every workload: the report's JSON."""
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    workloads = []
    for w in QUICK_WORKLOADS if args.quick else FULL_WORKLOADS:
        print(f"timing {w[0]} ...", file=sys.stderr, flush=True)
        res = time_workload(w, names, args.warmup, args.repeats)
        if not args.no_memory:
            print(f"memory {w[0]} ...", file=sys.stderr, flush=True)
            res["memory"] = measure_memory(w, names, args.memory_steps, args.threads)
        workloads.append(res)
    return {
        "command": command_line(args),
        "config": {
            "quick": args.quick,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "memory_steps": args.memory_steps,
            "sgd": SGD_KW,
            "sam": SAM_KW,
            "fsam": FSAM_KW,
        },
        "machine": benchkit.machine(torch_threads=args.threads),
        "load_average_start": load_start,
        "workloads": workloads,
        "optimizer_only": optimizer_only(args.optimizer_step_json),
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args._memory:
        memory_worker(args._memory)
        return 0
    prefix = args.prefix or ("cost_quick" if args.quick else "cost")
    if args.render_only:
        result = json.loads((args.out_dir / f"{prefix}.json").read_text())
        result["optimizer_only"] = optimizer_only(args.optimizer_step_json)
        benchkit.write_report(args.out_dir, prefix, markdown(result), result)
        print(markdown(result))
        return 0
    args.repeats = args.repeats or (3 if args.quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.memory_steps = args.memory_steps or (2 if args.quick else 5)
    torch.set_num_threads(args.threads)
    result = _measure(args, *_contenders(p, args))
    text = markdown(result)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    benchkit.write_report(args.out_dir, prefix, text, result)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
