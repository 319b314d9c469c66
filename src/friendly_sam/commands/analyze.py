"""``fsam analyze RUN_DIR``: the sharpness measures of :mod:`friendly_sam.analysis` on a trained run.

Loads the run's ``config.json`` and ``checkpoint.pt``, rebuilds the model and the training data exactly
as the run saw them (same subset, same label noise), takes a fixed random subset of the training images
(``subset``, seeded, *no augmentation*, with the run's possibly noisy labels: the objective the optimizer
minimised) and computes, each part optional:

=================  ========================================================  ==========================
part               what                                                      cost (passes over subset)
=================  ========================================================  ==========================
``eigenvalue``     top Hessian eigenvalue, power iteration                   <= ``eig_iters`` HVPs
``trace``          Hessian trace, Hutchinson (Rademacher)                    ``trace_samples`` HVPs
``sharpness``      worst-case loss increase within ``rho`` (run's rho and   ``sharpness_steps`` F+B
                   ASAM-ness by default), projected gradient ascent          + 1 F
``landscape1d``    loss/accuracy along one filter-normalised direction       ``points_1d`` F
``landscape2d``    the same on a grid of two directions                      ``points_2d**2`` F
=================  ========================================================  ==========================

An HVP costs about 3 forward+backward passes. Everything scales linearly with ``subset`` and with the
model's forward cost; each part records its own ``time_s`` and ``cpu_s`` in ``analysis.json`` (measured
costs on one machine: docs/results/decomposition.md).

Outputs in the run directory (``out`` to change): ``analysis.json`` (merged with an earlier one: parts not
recomputed are kept, each with its own options and checkpoint epoch), ``landscape_1d.png`` and
``landscape_2d.png``. BatchNorm: ``bn_mode="eval"`` (default; running statistics, a deterministic
function of the weights) or ``"batch"`` (per-batch statistics of ``batch_size`` chunks, as in training).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis import (
    hessian_trace,
    loss_landscape_1d,
    loss_landscape_2d,
    plot_landscape_1d,
    plot_landscape_2d,
    top_eigenvalue,
    worst_case_loss_increase,
)
from ..data.identity import check_same_data
from ..models import build_model
from ..train import run_dir as rd
from ..train.checkpoint import load_state_checked
from ..train.data_setup import clean_training_subset, prepare_data
from ..train.options import build, option
from ..train.progress import ProgressBar
from ..train.run_dir import ANALYSIS_FILE, RunDirectoryError, machine_description

ProgressFactory = Callable[[str], Callable[[int, int, str], None]]
PARTS = ("eigenvalue", "trace", "sharpness", "landscape1d", "landscape2d")


@dataclass
class AnalyzeOptions:
    """The options of ``fsam analyze`` (its flags are derived from these declarations)."""

    # fmt: off
    parts: str = option("all", f"comma-separated parts to compute: all or {', '.join(PARTS)}")
    skip: str | None = option(None, "comma-separated parts to leave out")
    subset: int = option(512, "training images analysed", range=">= 1")
    batch_size: int = option(256, "chunk size of the subset (memory; with --bn-mode batch also the BatchNorm "
                             "statistics)", range=">= 1")
    bn_mode: str = option("eval", "BatchNorm: running statistics (eval) or batch statistics (batch)",
                          choices=("eval", "batch"))
    seed: int = option(0, "seed of the subset, start vector, probes, directions", range=">= 0")
    eig_iters: int = option(20, "max power iterations = HVPs", range=">= 1")
    eig_tol: float = option(1e-3, "relative convergence tolerance", range="> 0.0")
    trace_samples: int = option(10, "Hutchinson probes = HVPs", range=">= 1")
    rho: float | None = option(None, "radius of the worst-case loss increase (default: the run's rho)", range="> 0.0")
    adaptive: bool | None = option(None, "ASAM-style worst case (default: the run's method is asam/afsam)")
    sharpness_steps: int = option(5, "ascent steps", range=">= 1")
    span: float = option(1.0, "landscape range [-span, span]", range="> 0.0")
    points_1d: int = option(21, "1-D landscape points", range=">= 2")
    points_2d: int = option(11, "2-D grid side; points**2 passes", range=">= 2")
    threads: int | None = option(None, "torch CPU threads (default: the run's --threads)", range=">= 1")
    device: str = option("cpu", "cpu, cuda or cuda:N", pattern=r"cpu|cuda(:\d+)?")
    checkpoint: str | None = option(None, "checkpoint to analyse (default: RUN_DIR/checkpoint.pt)")
    out: str | None = option(None, "directory for analysis.json and the PNGs (default: RUN_DIR)")
    quiet: bool = option(False, "no progress bars or messages")
    # fmt: on


def _parse_parts(value: str | None, name: str) -> list[str]:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    if items == ["all"]:
        return list(PARTS)
    bad = [v for v in items if v not in PARTS]
    if bad:
        raise ValueError(f"--{name}: unknown part(s) {', '.join(bad)}; choose from: all, {', '.join(PARTS)}")
    return items


def resolve_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The declared defaults + ``options`` (unknown, mistyped and out-of-range options are refused), with
    ``parts`` as the list of parts to compute (``skip`` removed)."""
    opts = dataclasses.asdict(build(AnalyzeOptions, dict(options or {}), source="flags"))
    skip = set(_parse_parts(opts["skip"], "skip"))
    opts["parts"] = [p for p in _parse_parts(opts["parts"], "parts") if p not in skip]
    opts["skip"] = sorted(skip)
    if opts["device"].startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {opts['device']}: CUDA is not available on this machine; use --device cpu"
        )
    return opts


def _all_finite(value: Any) -> bool:
    """False when ``value`` (a number, or a list of numbers or lists) holds NaN or an infinity."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


def _progress_factory(
    quiet: bool,
) -> tuple[Callable[[str], Callable[[int, int, str], None]], Callable[[], None]]:
    """A progress callback per part, drawn with the trainer's ProgressBar (created when the total is known)."""
    state: dict[str, ProgressBar | None] = {"bar": None}

    def make(prefix: str) -> Callable[[int, int, str], None]:
        def progress(done: int, total: int, message: str) -> None:
            bar = state["bar"]
            if bar is None or bar.total != total or bar.prefix != prefix:
                if bar is not None:
                    bar.close()
                bar = state["bar"] = ProgressBar(total, prefix, enabled=not quiet)
            bar.update(done, step=message.split(":")[-1].strip())

        return progress

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    return make, close


def load_run(run_dir: Path, opts: Mapping[str, Any]) -> dict[str, Any]:
    """Config, checkpoint, model (eval-ready, weights loaded) and the fixed analysis batches of a run."""
    cfg = rd.read_config(run_dir)
    device = torch.device(opts["device"])
    # the checkpoint must be this run's: same setting (identity options) and no more epochs than the run's
    path = Path(opts["checkpoint"]) if opts["checkpoint"] else None
    ckpt = rd.read_checkpoint(run_dir, cfg.to_dict(), path=path, note=lambda message: None)
    data = prepare_data(cfg, device)
    # the data must be what the checkpoint was trained on (a renamed class would permute the labels)
    check_same_data(
        ckpt.get("data"), data.fingerprint, accept=False, where=f"the checkpoint of {run_dir}",
        hint="Analyse it on the data it was trained on (--data-dir of its config.json).",
    )  # fmt: skip
    # clean: no augmentation (normalisation; image folders: the centre crop), the run's labels
    x_all, y_all = clean_training_subset(data, opts["subset"], opts["seed"], device)
    n = len(y_all)
    model = build_model(cfg.model, data.num_classes, data.in_channels).to(device)
    load_state_checked(model, ckpt["model"], path or run_dir / rd.CHECKPOINT_FILE, "model")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    bs = opts["batch_size"]
    batches = [(x_all[i : i + bs], y_all[i : i + bs]) for i in range(0, n, bs)]
    return {"cfg": cfg, "ckpt": ckpt, "model": model, "batches": batches, "n": n}


def _measure(
    part: str, run: dict[str, Any], opts: Mapping[str, Any], progress: Callable[[int, int, str], None]
) -> tuple[dict[str, Any], str]:
    """One part's result dict and its one-line summary."""
    cfg, model, batches = run["cfg"], run["model"], run["batches"]
    loss_fn, seed = nn.functional.cross_entropy, opts["seed"]
    common = {"progress": progress, "bn_mode": opts["bn_mode"]}
    if part == "eigenvalue":
        r = top_eigenvalue(
            model, loss_fn, batches, iters=opts["eig_iters"], tol=opts["eig_tol"], seed=seed, **common
        ).to_dict()
        return r, f"top eigenvalue {r['eigenvalue']:.4g} ({r['hvps']} HVPs, converged {r['converged']})"
    if part == "trace":
        r = hessian_trace(
            model, loss_fn, batches, samples=opts["trace_samples"], seed=seed, **common
        ).to_dict()
        return r, f"Hessian trace {r['trace']:.4g} ± {r['std_error']:.2g} ({r['hvps']} HVPs)"
    if part == "sharpness":
        rho = opts["rho"] if opts["rho"] is not None else cfg.rho
        adaptive = opts["adaptive"] if opts["adaptive"] is not None else cfg.method in ("asam", "afsam")
        r = worst_case_loss_increase(
            model, loss_fn, batches, rho=rho, steps=opts["sharpness_steps"], adaptive=adaptive, **common
        ).to_dict()
        r["rho_source"] = "option" if opts["rho"] is not None else "run config"
        return r, f"worst-case loss increase within rho={rho:g}: {r['increase']:.4g} (loss {r['loss']:.4g})"
    if part == "landscape1d":
        r = loss_landscape_1d(
            model, loss_fn, batches, span=opts["span"], points=opts["points_1d"], seed=seed, **common
        ).to_dict()
        return (
            r,
            f"1-D landscape: {len(r['losses'])} points, loss {min(r['losses']):.4g}..{max(r['losses']):.4g}",
        )
    r = loss_landscape_2d(
        model, loss_fn, batches, span=opts["span"], points=opts["points_2d"], seed=seed, **common
    ).to_dict()
    return r, f"2-D landscape: {len(r['losses'])}x{len(r['losses'][0])} points"


PLOTS = {"landscape1d": ("landscape_1d.png", "1-D"), "landscape2d": ("landscape_2d.png", "2-D")}


def _merge(previous: dict[str, Any] | None, analysis: dict[str, Any]) -> dict[str, Any]:
    """``analysis`` merged into an earlier ``analysis.json`` (read under its lock): parts computed now
    replace theirs, the others are kept; a file that is not one of ours is refused, never overwritten."""
    if previous is None:
        return analysis
    results, files = previous.get("results", {}), previous.get("files", [])
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise RunDirectoryError(
            f"the analysis file in {analysis['run_dir']} is damaged ('results' is not a table of parts); "
            "move it away or delete it, then run fsam analyze again"
        )
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        files = []
    merged = {**results, **analysis["results"]}
    return {**analysis, "results": merged, "files": sorted(set(files) | set(analysis["files"]))}


def analyze_run(
    run_dir: str | Path, options: Mapping[str, Any] | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the chosen sharpness measures on a run's checkpoint; write ``analysis.json`` and PNGs.

    ``options``: see :class:`AnalyzeOptions` (the ``fsam analyze`` flags). Returns the analysis dict as written.
    """
    run_dir = Path(run_dir)
    opts = resolve_options(options)
    if not opts["parts"]:
        raise ValueError("nothing to do: every part is skipped")
    say = (lambda msg: None) if opts["quiet"] else log
    t_load = time.perf_counter()
    run = load_run(run_dir, opts)  # refuses a missing or foreign run before anything is created
    out_dir = Path(opts["out"]) if opts["out"] else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = run["cfg"]
    threads = opts["threads"] or cfg.threads
    if threads:
        torch.set_num_threads(int(threads))
    run["model"].eval()
    epoch = int(run["ckpt"]["epoch"])
    say(
        f"analyzing {run_dir} (epoch {epoch}, {cfg.model}, {cfg.label}) on {run['n']} training images, "
        f"parts: {', '.join(opts['parts'])}"
    )
    load_time = time.perf_counter() - t_load
    path = out_dir / ANALYSIS_FILE
    if os.path.lexists(path):  # refuse a damaged file before the work, not after
        _merge(rd.read_json_object(path, "analysis file"), {"run_dir": str(run_dir), "results": {}, "files": []})
    results, files = _run_parts(run, opts, out_dir, {}, say)
    analysis = {
        "run_dir": str(run_dir),
        "label": cfg.label,
        "method": cfg.method,
        "base": cfg.base,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "checkpoint_epoch": epoch,
        "options": {k: v for k, v in opts.items() if k not in ("quiet",)},
        "results": results,
        "files": sorted(files),
        "load_time_s": load_time,
        "machine": {**machine_description(), "threads": torch.get_num_threads()},
    }
    # read-merge-write under a lock: a concurrent `fsam analyze` of other parts lands too
    analysis = rd.update_json(path, "analysis file", lambda previous: _merge(previous, analysis))
    say(f"wrote {path}" + (f" and {', '.join(files)}" if files else ""))
    undefined = [
        f"{part} ({key})"
        for part in opts["parts"]
        for key, value in results[part].items()
        if key != "std_error" and not _all_finite(value)
    ]
    if undefined:
        raise FloatingPointError(
            f"the loss of {run_dir}'s checkpoint (or near it) is not finite: {', '.join(undefined)} are "
            f"undefined (null in {path}); the run has diverged or its weights are damaged"
        )
    return analysis


def _run_parts(
    run: dict[str, Any],
    opts: Mapping[str, Any],
    out_dir: Path,
    results: dict[str, Any],
    say: Callable[[str], None],
) -> tuple[dict[str, Any], list[str]]:
    """Each chosen part, timed, into ``results``; the plots into ``out_dir``. Returns results and plot files."""
    common = {
        "checkpoint_epoch": int(run["ckpt"]["epoch"]),
        "subset": run["n"],
        "seed": opts["seed"],
        "bn_mode": opts["bn_mode"],
    }
    make_progress, close_progress = _progress_factory(bool(opts["quiet"]))
    files: list[str] = []
    for part in opts["parts"]:
        t0, c0 = time.perf_counter(), time.process_time()
        r, summary = _measure(part, run, opts, make_progress(part))
        close_progress()
        if part in PLOTS:
            name, dims = PLOTS[part]
            plot = plot_landscape_1d if part == "landscape1d" else plot_landscape_2d
            plot(r, out_dir / name, title=f"{run['cfg'].label}: {dims} loss landscape")
            files.append(name)
        r.update(common)
        r["time_s"] = time.perf_counter() - t0
        r["cpu_s"] = time.process_time() - c0  # CPU time of this process: meaningful on a busy machine
        results[part] = r
        say(f"  {part}: {summary} [{r['time_s']:.1f} s, CPU {r['cpu_s']:.1f} s]")
    return results, files


def analysis_summary(analysis: Mapping[str, Any]) -> dict[str, float | None]:
    """The headline numbers of an ``analysis.json`` (None for parts not computed)."""
    res = analysis.get("results", {}) if isinstance(analysis, Mapping) else {}
    res = res if isinstance(res, Mapping) else {}

    def get(part: str, key: str) -> float | None:  # a damaged file's wrong types count as not measured
        entry = res.get(part)
        value = entry.get(key) if isinstance(entry, Mapping) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return {
        "top_eigenvalue": get("eigenvalue", "eigenvalue"),
        "hessian_trace": get("trace", "trace"),
        "worst_case_increase": get("sharpness", "increase"),
    }
