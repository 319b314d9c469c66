"""Report of the efficient-F-SAM benchmark: per cell, accuracy per seed and time ratio of every method.

Writes ``<prefix>.json`` (noisy cell), ``<prefix>_clean.json`` (clean cell), ``<prefix>.md`` (both
tables and the target check) and ``<prefix>.png`` (test accuracy vs time per step, both cells). A method
whose runs are not all finished is reported from the seeds that are, marked ``"complete": false``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks import benchkit
from benchmarks.efficient.plan import CELL_RHOS, LMBDA, VARIANT_TITLES, VARIANTS, VariantSpec
from benchmarks.generalization.plan import SETTING_TITLES
from friendly_sam.reporting import PlottingUnavailable, new_figure, save_figure
from friendly_sam.train import run_dir as rd

BASELINES = ("sgd", "sam", "fsam")
TITLES = {"sgd": "SGD", "sam": "SAM", "fsam": "F-SAM", **VARIANT_TITLES}
# plot annotations (the legend carries the full titles)
SHORT = {
    "fsam-p4": "k=4",
    "fsam-ls4": "LookSAM k=4",
    "fsam-sb25": "f=1/4",
    "fsam-sb12": "f=1/8",
    "fsam-sb06": "f=1/16",
}
# The issue's target: a variant at <= 1.3x SGD's time keeping >= 80 % of F-SAM's noisy-cell gain over SGD
# (means over seeds), and no worse than SGD on the clean cell.
MAX_TIME_RATIO, MIN_GAIN_KEPT = 1.3, 0.8


# --------------------------------------------------------------------------- reading runs
def read_seed_runs(config_dir: Path, seeds: list[int]) -> dict[int, dict[str, float]]:
    """Finished runs of one configuration: seed -> final test/val accuracy and the run's wall time."""
    out: dict[int, dict[str, float]] = {}
    for seed in seeds:
        run = config_dir / f"seed{seed}"
        if rd.has_summary(run):
            s = rd.read_summary(run)
            out[seed] = {
                "test_acc": s["final_test_acc"],
                "val_acc": s["final_val_acc"],
                "wall_s": s["wall_time"],
            }
    return out


def select(configs: dict[str, dict[int, dict[str, float]]], seeds: list[int]) -> tuple[str | None, dict]:
    """The configuration with the highest mean final validation accuracy, among those with the most
    finished seeds (never on the test set); returns (name, sweep summary)."""
    sweep = {
        name: {
            "seeds": sorted(runs),
            "val_acc_mean": statistics.fmean(r["val_acc"] for r in runs.values()),
            "test_acc_mean": statistics.fmean(r["test_acc"] for r in runs.values()),
        }
        for name, runs in configs.items()
        if runs
    }
    if not sweep:
        return None, {}
    most = max(len(v["seeds"]) for v in sweep.values())
    best = max((n for n in sweep if len(sweep[n]["seeds"]) == most), key=lambda n: sweep[n]["val_acc_mean"])
    return best, sweep


def method_entry(name: str, runs: dict[int, dict[str, float]], seeds: list[int], **extra: Any) -> dict:
    done = sorted(runs)
    accs = [runs[s]["test_acc"] for s in done]
    return {
        "seeds": done,
        "test_acc": accs,
        "val_acc": [runs[s]["val_acc"] for s in done],
        "test_acc_mean": statistics.fmean(accs) if accs else None,
        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
        "complete": done == sorted(seeds),
        "run_wall_time_s": [round(runs[s]["wall_s"], 1) for s in done if runs[s].get("wall_s") is not None],
        **extra,
    }


def noisy_baselines(baseline_dir: Path, seeds: list[int]) -> dict[str, dict]:
    """SGD, SAM and F-SAM of the generalization suite's sym40-long runs (rho selected on validation over
    the noisy cell's standard grid, CELL_RHOS)."""
    cell = baseline_dir / "sym40-long"
    rhos = CELL_RHOS["sym40-long"]
    grids = {
        "sgd": ["sgd"],
        "sam": [f"sam_rho{r:g}" for r in rhos],
        "fsam": [f"fsam_rho{r:g}_lmbda{LMBDA:g}" for r in rhos],
    }
    out = {}
    for method, names in grids.items():
        configs = {n: read_seed_runs(cell / n, seeds) for n in names}
        best, sweep = select(configs, seeds)
        runs = configs.get(best, {}) if best else {}
        out[method] = method_entry(method, runs, seeds, config=best, sweep=sweep, source=str(cell))
    return out


def clean_baselines(report_json: Path, seeds: list[int]) -> dict[str, dict]:
    """SGD, SAM and F-SAM of the clean cell from the generalization suite's report (its selection)."""
    if not report_json.is_file():
        return {
            m: method_entry(m, {}, seeds, config=None, source=f"missing: {report_json}") for m in BASELINES
        }
    methods = json.loads(report_json.read_text())["settings"]["clean"]["methods"]
    out = {}
    for m in BASELINES:
        r = methods[m]
        val = r.get("val_acc") or [r["val_acc_mean_std"][0]] * len(r["seeds"])  # the report keeps the mean
        runs = {s: {"test_acc": t, "val_acc": v} for s, t, v in zip(r["seeds"], r["test_acc"], val)}
        runs = {s: v for s, v in runs.items() if s in seeds}
        out[m] = method_entry(m, runs, seeds, config=r["config"], source=str(report_json))
    return out


def variant_entries(work: Path, cell: str, specs: list[VariantSpec], seeds: list[int]) -> dict[str, dict]:
    out = {}
    for variant in dict.fromkeys(s.variant for s in specs if s.cell == cell):
        names = dict.fromkeys(s.config_name for s in specs if s.cell == cell and s.variant == variant)
        configs = {n: read_seed_runs(work / "runs" / cell / n, seeds) for n in names}
        best, sweep = select(configs, seeds)
        runs = configs.get(best, {}) if best else {}
        every, between, fraction = VARIANTS[variant]
        options = {"perturb_every": every, "between": between, "ascent_fraction": fraction}
        out[variant] = method_entry(variant, runs, seeds, config=best, sweep=sweep, options=options)
        # every rho of the grid must be finished for the selection to be final
        out[variant]["complete"] = all(sorted(configs[n]) == sorted(seeds) for n in names)
    return out


# --------------------------------------------------------------------------- the report
def cell_report(args: Any, suite: dict[str, Any], specs: list[VariantSpec], cell: str, timing: dict) -> dict:
    seeds = sorted({s.seed for s in specs}) or [0, 1, 2]
    if cell == "clean":
        methods = clean_baselines(Path(args.clean_baseline), seeds)
    else:
        methods = noisy_baselines(Path(args.baseline_dir), seeds)
    methods.update(variant_entries(Path(args.work_dir), cell, specs, seeds))
    for name, entry in methods.items():
        entry["time_ratio_to_sgd"] = timing.get(name, {}).get("time_ratio_to_sgd")
    for entry in methods.values():
        paired_comparisons(entry, methods["sgd"], methods["fsam"])
    noise = 0.4 if cell.startswith("sym40") else 0.0
    setting = {
        "cell": cell,
        "title": SETTING_TITLES.get(cell, cell),
        "label_noise": noise,
        "epochs": suite["epochs"] * (suite["long_factor"] if cell.endswith("-long") else 1),
        "model": suite["model"],
        "train_images": suite["train_subset"] - suite["val_size"],
        "val_images": suite["val_size"],
        "batch_size": suite["batch_size"],
        "lr": suite["lr"],
        "seeds": seeds,
        "rho_grid": sorted({s.rho for s in specs if s.cell == cell}, reverse=True),
        "lmbda": LMBDA,
        "selection": "rho by mean final validation accuracy over seeds (validation keeps clean labels)",
        "time_ratio": "per-step wall time / SGD's, benchmarks/efficient/timing.py (interleaved, 1 thread)",
        "complete": all(e["complete"] for e in methods.values()),
    }
    return {"setting": setting, "methods": methods}


def _by_seed(entry: dict) -> dict[int, float]:
    return dict(zip(entry["seeds"], entry["test_acc"]))


def paired_comparisons(entry: dict, sgd: dict, fsam: dict) -> None:
    """``minus_sgd``: mean test accuracy minus SGD's over the seeds both have (same seed: same data, noise,
    initialisation and batch order); ``fsam_gain_kept``: (acc - SGD) / (F-SAM - SGD), means over the
    seeds all three have. None where no seed is shared."""
    mine, base, ref = _by_seed(entry), _by_seed(sgd), _by_seed(fsam)
    both = [s for s in mine if s in base]
    diffs = [mine[s] - base[s] for s in both]
    entry["minus_sgd"] = statistics.fmean(diffs) if diffs else None
    entry["minus_sgd_std"] = statistics.stdev(diffs) if len(diffs) > 1 else None
    entry["minus_sgd_seeds"] = both
    common = [s for s in both if s in ref]
    gain = statistics.fmean(ref[s] - base[s] for s in common) if common else 0.0
    kept = statistics.fmean(mine[s] - base[s] for s in common) / gain if common and gain else None
    entry["fsam_gain_kept"], entry["fsam_gain_kept_seeds"] = kept, common


def target_check(noisy: dict, clean: dict) -> dict[str, Any]:
    """Which variants meet the issue's target."""
    out = {}
    for name in noisy["methods"]:
        if name in BASELINES:
            continue
        n, c = noisy["methods"][name], clean["methods"].get(name, {})
        ratio, kept = n.get("time_ratio_to_sgd"), n.get("fsam_gain_kept")
        clean_diff, clean_std = c.get("minus_sgd"), c.get("minus_sgd_std")
        meets = (
            None
            if None in (ratio, kept, clean_diff)
            else (ratio <= MAX_TIME_RATIO and kept >= MIN_GAIN_KEPT and clean_diff >= 0)
        )
        complete = all(
            cell["methods"][m]["complete"]
            for cell in (noisy, clean)
            for m in (name, "sgd", "fsam")
            if m in cell["methods"]
        )
        out[name] = {
            "time_ratio": ratio,
            "gain_kept": kept,
            "clean_minus_sgd": clean_diff,
            "clean_minus_sgd_std": clean_std,
            "meets": meets,
            "complete": complete,  # False: a verdict on the seeds finished so far
        }
    return out


def write_report(args: Any, suite: dict[str, Any], specs: list[VariantSpec]) -> None:
    timing_path = Path(args.timing)
    timing = json.loads(timing_path.read_text())["methods"] if timing_path.is_file() else {}
    noisy = cell_report(args, suite, specs, "sym40-long", timing)
    clean = cell_report(args, suite, specs, "clean", timing)
    noisy["target"] = target_check(noisy, clean)
    meta = {
        "commit": benchkit.git_commit(),
        "timing_file": timing_path.name,
        "written_by": "benchmarks/efficient/run.py",
    }
    noisy["meta"] = clean["meta"] = meta
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.prefix}.json").write_text(json.dumps(noisy, indent=1) + "\n")
    (out / f"{args.prefix}_clean.json").write_text(json.dumps(clean, indent=1) + "\n")
    (out / f"{args.prefix}.md").write_text(markdown(noisy, clean))
    plot(noisy, clean, out / f"{args.prefix}.png")
    print(f"wrote {out}/{args.prefix}.{{json,md,png}} and {args.prefix}_clean.json", flush=True)


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(cell: dict, gain: bool) -> list[str]:
    """One cell's markdown table; ``gain``: show the share of F-SAM's gain over SGD kept (noisy cell)."""
    lines = [
        f"**{cell['setting']['title']}** ({cell['setting']['epochs']} epochs"
        f"{'' if cell['setting']['complete'] else '; INCOMPLETE: some runs still missing'})",
        "",
        "| method | time / SGD | test acc % (mean ± std) | seeds | vs SGD (paired, mean ± std) | F-SAM gain kept | config |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in cell["methods"].items():
        acc = f"{_fmt(m['test_acc_mean'])} ± {_fmt(m['test_acc_std'])}"
        seeds = f"{len(m['seeds'])}{'' if m['complete'] else ' (incomplete)'}"
        kept = (
            "-"
            if m["fsam_gain_kept"] is None or name == "sgd" or not gain
            else f"{100 * m['fsam_gain_kept']:.0f} %"
        )
        lines.append(
            f"| {TITLES.get(name, name)} | {_fmt(m['time_ratio_to_sgd'])} | {acc} | {seeds} | "
            f"{_fmt(m['minus_sgd'], '+.2f')} ± {_fmt(m['minus_sgd_std'])} | {kept} | {m.get('config') or '-'} |"
        )
    return lines


def markdown(noisy: dict, clean: dict) -> str:
    lines = ["# Efficient F-SAM: accuracy vs time", ""]
    lines += table(noisy, gain=True) + [""] + table(clean, gain=False) + [""]
    lines.append(
        "Target (issue #15): time <= 1.3x SGD, >= 80 % of F-SAM's noisy-cell gain over SGD, clean cell no "
        "worse than SGD (means over seeds):"
    )
    lines.append("")
    for name, t in noisy["target"].items():
        verdict = {True: "meets", False: "misses", None: "not yet measured"}[t["meets"]]
        if t["meets"] is not None and not t["complete"]:
            verdict += " so far (runs missing)"
        kept = "-" if t["gain_kept"] is None else f"{100 * t['gain_kept']:.0f} %"
        lines.append(
            f"- {TITLES.get(name, name)}: {verdict} (time {_fmt(t['time_ratio'])}x, gain kept {kept}, clean vs SGD "
            f"{_fmt(t['clean_minus_sgd'], '+.2f')} ± {_fmt(t['clean_minus_sgd_std'])} paired over seeds)"
        )
    refs = [
        f"{TITLES[m]} {_fmt(clean['methods'][m]['minus_sgd'], '+.2f')} ± {_fmt(clean['methods'][m]['minus_sgd_std'])}"
        for m in ("sam", "fsam")
    ]
    lines.append(f"- for reference, clean cell vs SGD (paired): {', '.join(refs)}")
    return "\n".join(lines) + "\n"


def pareto_front(methods: dict[str, dict]) -> list[tuple[float, float]]:
    """(time ratio, mean accuracy) of the methods no other method beats in both (faster and better)."""
    points = sorted(
        (m["time_ratio_to_sgd"], m["test_acc_mean"])
        for m in methods.values()
        if m["time_ratio_to_sgd"] is not None and m["test_acc_mean"] is not None
    )
    front: list[tuple[float, float]] = []
    for t, acc in points:
        if not front or acc > front[-1][1]:
            front.append((t, acc))
    return front


def plot(noisy: dict, clean: dict, path: Path) -> None:
    try:
        fig = new_figure("the efficient-variants plot", figsize=(11, 4.2), dpi=110)
    except PlottingUnavailable as exc:
        print(f"{exc}: no plot", flush=True)
        return
    axes = fig.subplots(1, 2)
    colors = {name: f"C{i}" for i, name in enumerate(noisy["methods"])}
    for ax, cell in zip(axes, (noisy, clean)):
        for name, m in cell["methods"].items():
            if m["test_acc_mean"] is None or m["time_ratio_to_sgd"] is None:
                continue
            marker = "o" if name in BASELINES else "s"
            label = TITLES.get(name, name) + ("" if m["complete"] else " (incomplete)")
            ax.errorbar(
                m["time_ratio_to_sgd"],
                m["test_acc_mean"],
                yerr=m["test_acc_std"] or 0,
                fmt=marker,
                capsize=3,
                color=colors.get(name),
                label=label,
            )
            ax.annotate(
                SHORT.get(name, TITLES.get(name, name)),
                (m["time_ratio_to_sgd"], m["test_acc_mean"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        front = pareto_front(cell["methods"])
        ax.plot(
            [p[0] for p in front], [p[1] for p in front], color="grey", ls="--", lw=1, label="Pareto front"
        )
        ax.axvline(MAX_TIME_RATIO, color="grey", ls=":", lw=1, label="1.3x SGD")
        ax.legend(fontsize=6.5, loc="best")
        ax.set_xlabel("wall time per step / SGD")
        ax.set_ylabel("test accuracy % (mean ± std over seeds)")
        ax.set_title(cell["setting"]["title"], fontsize=10)
        ax.grid(alpha=0.3)
    save_figure(fig, path)
