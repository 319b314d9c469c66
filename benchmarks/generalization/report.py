"""The generalization suite's report: finished runs collected, selection on validation accuracy, paired
differences, the markdown table and the plot. See run.py for the suite as a whole."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks import benchkit
from benchmarks.generalization.plan import METHOD_TITLES, SETTING_TITLES, RunSpec, all_settings, plan
from friendly_sam.reporting import PlottingUnavailable, mean_std, new_figure, save_figure
from friendly_sam.train import run_dir as rd


def load_prior(path: str | None, suite: dict[str, Any]) -> dict[str, Any]:
    """Per-run records of an earlier report of the same suite, by run id (``{}`` without ``--prior``).

    For completing a suite whose run directories were lost (a new machine): runs are deterministic (a seed
    fixes data, noise, initialisation and batch order), and the report compares every run present both in
    the prior report and here, so a rerun shows whether the prior numbers still hold."""
    if not path:
        return {}
    try:
        prior = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--prior {path}: cannot read the report ({exc})") from exc
    if "suite" not in prior or "settings" not in prior:
        raise SystemExit(f"--prior {path}: not a report of this suite (no 'suite'/'settings' keys)")
    diff = sorted(k for k in set(suite) | set(prior["suite"]) if suite.get(k) != prior["suite"].get(k))
    if diff:
        raise SystemExit(
            f"--prior {path} is a report of another suite ({', '.join(diff)} differ): its runs cannot stand in "
            "for this suite's"
        )
    records: dict[str, Any] = {}
    for setting, out in prior["settings"].items():
        for config, cfg_out in out["sweep"].items():
            for rec in cfg_out["per_seed"]:
                records[f"{setting}/{config}/seed{rec['seed']}"] = dict(rec)
    return {"path": path, "commit": prior["meta"]["machine"].get("commit"), "records": records}


def _paired(methods: dict[str, Any], by_cfg: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """Per-seed differences a - b of the selected configurations (seeds both have)."""
    if a not in methods or b not in methods:
        return None
    ra, rb = by_cfg[methods[a]["config"]], by_cfg[methods[b]["config"]]
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        return None
    diffs = [ra[s]["test_acc"] - rb[s]["test_acc"] for s in seeds]
    return {"seeds": seeds, "diffs": diffs, "mean_std": mean_std(diffs)}


def _record(work: Path, suite: dict[str, Any], spec: RunSpec, run: dict[str, Any]) -> dict[str, Any]:
    """The per-seed numbers of one finished run."""
    s, m = run["summary"], run["metrics"]
    noise = rd.read_label_noise(work / "runs" / spec.run_id)
    n_noisy = len(noise["indices"]) if noise else 0
    return {
        "noisy_label_fraction": n_noisy / (suite["train_subset"] - suite["val_size"]),
        "seed": spec.seed,
        "test_acc": s["final_test_acc"],
        "val_acc": s["final_val_acc"],
        "best_test_acc": s["best_test_acc"],
        "final_train_acc": m[-1]["train_acc"],
        "wall_time_s": s["wall_time"],
        "images_per_s": s["mean_images_per_s"],
        "median_epoch_train_s": statistics.median(x["train_time"] for x in m),
    }


def _sweep(by_cfg: dict[str, dict[int, dict[str, Any]]], method_of: dict[str, str]) -> dict[str, Any]:
    return {
        name: {
            "method": method_of[name],
            "n": len(runs),
            "seeds": sorted(runs),
            "val_acc_mean_std": mean_std([r["val_acc"] for r in runs.values()]),
            "test_acc_mean_std": mean_std([r["test_acc"] for r in runs.values()]),
            "per_seed": [runs[s] for s in sorted(runs)],
        }
        for name, runs in by_cfg.items()
    }


def _select(sweep: dict[str, Any], order: list[str]) -> dict[str, str | None]:
    """Per method the configuration with the highest mean validation accuracy; ties go to the first
    configuration in grid order ``order``."""
    selected: dict[str, str | None] = {}
    for method in ("sgd", "sam", "fsam"):
        cands = [n for n in sweep if sweep[n]["method"] == method]
        cands.sort(key=lambda n: (-round(sweep[n]["val_acc_mean_std"][0], 6), order.index(n)))
        selected[method] = cands[0] if cands else None
    return selected


def _method_summary(name: str, runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The selected configuration ``name`` of a method over its seeds."""
    seeds = sorted(runs)
    return {
        "config": name,
        "seeds": seeds,
        "test_acc": [runs[s]["test_acc"] for s in seeds],
        "prior_seeds": [s for s in seeds if runs[s].get("source") == "prior"],
        "test_acc_mean_std": mean_std([runs[s]["test_acc"] for s in seeds]),
        "val_acc_mean_std": mean_std([runs[s]["val_acc"] for s in seeds]),
        "final_train_acc_mean": statistics.fmean(runs[s]["final_train_acc"] for s in runs),
        "clean_share_mean": 100 * (1 - statistics.fmean(runs[s]["noisy_label_fraction"] for s in runs)),
        "best_epoch_test_acc_mean": statistics.fmean(runs[s]["best_test_acc"] for s in runs),
    }


def _equal_rho(setting: str, suite: dict[str, Any], by_cfg: dict[str, Any]) -> dict[str, Any]:
    """F-SAM - SAM at equal rho and lmbda fixed: no extra selection freedom for F-SAM."""
    out = {}
    for rho in suite["fsam_rhos"]:
        if rho not in suite["sam_rhos"]:
            continue
        sam = by_cfg.get(RunSpec(setting, "sam", 0, rho).config_name, {})
        for lmbda in suite["lmbdas"]:
            fsam = by_cfg.get(RunSpec(setting, "fsam", 0, rho, lmbda).config_name, {})
            seeds = sorted(set(sam) & set(fsam))
            if seeds:
                diffs = [fsam[s]["test_acc"] - sam[s]["test_acc"] for s in seeds]
                out[f"rho{rho:g}_lmbda{lmbda:g}"] = {
                    "seeds": seeds,
                    "diffs": diffs,
                    "mean_std": mean_std(diffs),
                }
    return out


def _versus_pto(setting: str, suite: dict[str, Any], by_cfg: dict[str, Any]) -> dict[str, Any]:
    """Ours vs pytorch-optimizer's class at the same grid point, per seed both have."""
    pto = {}
    for kind, ours_method in (("pto-sam", "sam"), ("pto-fsam", "fsam")):
        lm = suite["pto_lmbda"] if kind == "pto-fsam" else None
        theirs_name = RunSpec(setting, kind, 0, suite["pto_rho"], lm).config_name
        ours_name = RunSpec(setting, ours_method, 0, suite["pto_rho"], lm).config_name
        theirs, ours = by_cfg.get(theirs_name, {}), by_cfg.get(ours_name, {})
        seeds = sorted(set(theirs) & set(ours))
        if seeds:
            pto[kind] = {
                "ours_config": ours_name,
                "seeds": seeds,
                "ours_test_acc": [ours[s]["test_acc"] for s in seeds],
                "theirs_test_acc": [theirs[s]["test_acc"] for s in seeds],
                "ours_minus_theirs": mean_std([ours[s]["test_acc"] - theirs[s]["test_acc"] for s in seeds]),
                # median epoch training time: robust to a slow epoch on a shared machine
                "time_ratio_theirs_over_ours": mean_std(
                    [theirs[s]["median_epoch_train_s"] / ours[s]["median_epoch_train_s"] for s in seeds]
                ),
            }
    return pto


def _setting(
    setting: str,
    suite: dict[str, Any],
    specs: list[RunSpec],
    records: dict[RunSpec, dict[str, Any]],
    prior_records: dict[str, Any],
) -> dict[str, Any]:
    """One setting's sweep, selection, selected methods and paired differences."""
    by_cfg: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    method_of: dict[str, str] = {}
    for spec in (s for s in specs if s.setting == setting):
        if spec in records:
            by_cfg[spec.config_name][spec.seed] = records[spec]
        elif spec.run_id in prior_records:
            by_cfg[spec.config_name][spec.seed] = {**prior_records[spec.run_id], "source": "prior"}
        method_of[spec.config_name] = spec.method
    sweep = _sweep(by_cfg, method_of)
    order = [s.config_name for s in specs if s.setting == setting and s.seed == suite["seeds"][0]]
    selected = _select(sweep, order)
    methods = {method: _method_summary(name, by_cfg[name]) for method, name in selected.items() if name}
    return {
        "selected": selected,
        "methods": methods,
        "fsam_minus_sam": _paired(methods, by_cfg, "fsam", "sam"),
        "sam_minus_sgd": _paired(methods, by_cfg, "sam", "sgd"),
        "fsam_minus_sgd": _paired(methods, by_cfg, "fsam", "sgd"),
        "fsam_minus_sam_equal_rho": _equal_rho(setting, suite, by_cfg),
        "pytorch_optimizer": _versus_pto(setting, suite, by_cfg),
        "sweep": sweep,
    }


def _prior_summary(
    prior: dict[str, Any], specs: list[RunSpec], records: dict[RunSpec, dict[str, Any]]
) -> dict[str, Any]:
    """Which runs come from the ``--prior`` report, and, for runs both there and here, whether the prior
    numbers still hold."""
    prior_records = prior["records"]
    from_prior = [s for s in specs if s not in records and s.run_id in prior_records]
    rerun = [s for s in records if s.run_id in prior_records]
    check = [
        max(
            abs(records[s][k] - prior_records[s.run_id][k])
            for k in ("test_acc", "val_acc", "final_train_acc")
        )
        for s in rerun
    ]
    return {
        "path": prior["path"],
        "commit": prior["commit"],
        "runs_used": [s.run_id for s in from_prior],
        "rerun_here": [s.run_id for s in rerun],
        "rerun_max_abs_diff": max(check) if check else None,
    }


def collect(work: Path, suite: dict[str, Any], prior: dict[str, Any] | None = None) -> dict[str, Any]:
    """Finished runs (and, for runs not here, the ``--prior`` report's records), selection on validation
    accuracy, per-seed test accuracies and paired differences."""
    specs = plan(suite)
    prior_records = (prior or {}).get("records", {})
    finished: dict[RunSpec, dict[str, Any]] = {}
    for spec in specs:
        d = work / "runs" / spec.run_id
        if rd.has_summary(d):
            finished[spec] = {"summary": rd.read_summary(d), "metrics": rd.read_metrics(d)}
    records = {spec: _record(work, suite, spec, run) for spec, run in finished.items()}
    settings_out = {st: _setting(st, suite, specs, records, prior_records) for st in all_settings(suite)}
    from_prior = [s for s in specs if s not in finished and s.run_id in prior_records]
    cpu_time = sum(f["summary"]["wall_time"] for f in finished.values()) + sum(
        prior_records[s.run_id]["wall_time_s"] for s in from_prior
    )
    return {
        "finished": len(finished) + len(from_prior),
        "run_here": len(finished),
        "from_prior": len(from_prior),
        "prior": _prior_summary(prior, specs, records) if prior else None,
        "total": len(specs),
        "complete": len(finished) + len(from_prior) == len(specs),
        "sum_run_wall_time_s": cpu_time,
        "settings": settings_out,
        "_finished": finished,
    }


def _pm(ms: tuple[float, float] | list[float] | None, digits: int = 2) -> str:
    if ms is None or math.isnan(ms[0]):
        return "–"
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _signed(ms: tuple[float, float] | list[float] | None) -> str:
    if ms is None or math.isnan(ms[0]):
        return "–"
    return f"{ms[0]:+.2f} ± {ms[1]:.2f}"


def _prior_lines(res: dict[str, Any]) -> list[str]:
    prior = res.get("prior")
    if not prior:
        return []
    n_check, worst = len(prior["rerun_here"]), prior["rerun_max_abs_diff"]
    check = (
        f"{n_check} of its runs were also rerun here ({', '.join(prior['rerun_here'])}); the largest "
        f"difference in test, validation or training accuracy is {worst:.2f} points"
        + (" (bit-for-bit reproduction)" if worst == 0 else "")
        if n_check
        else "none of its runs was rerun here, so the reproduction is not checked"
    )
    return [
        f"Of the {res['finished']} finished runs, {res['run_here']} ran here and {res['from_prior']} come from "
        f"`{prior['path']}`, the report of an earlier sitting (commit {prior['commit']}) whose run directories "
        f"were not kept (a new machine): their per-run results are reused, their learning curves are not in "
        f"the plot. Runs are deterministic (a seed fixes everything); {check}.",
        "",
    ]


def _summary_lines(res: dict[str, Any], suite: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Status, command, machine, setup and the main table."""
    m = meta["machine"]
    status = (
        "complete"
        if res["complete"]
        else f"**INCOMPLETE: {res['finished']} of {res['total']} runs finished.** Cells with fewer seeds "
        "than planned, and selections made on fewer seeds, will change when the suite is resumed"
    )
    return [
        f"# Generalization: SGD vs SAM vs F-SAM on Fashion-MNIST{' (quick mode)' if meta['quick'] else ''}",
        "",
        f"Status: {status}.",
        "",
        f"Command: `{meta['command']}` (resumable: rerun it to continue; "
        "`--report-only` rebuilds this file from the finished runs).",
        f"Commit {m['commit']}, torch {m['torch']}, Python {m['python']}, pytorch-optimizer "
        f"{m['pytorch_optimizer'] or 'not installed'}; {m['cpu']}, {m['cpu_count']} CPUs, one torch thread "
        f"per run; report written {meta['written']}. Sum of run wall times: "
        f"{res['sum_run_wall_time_s'] / 3600:.2f} h.",
        "",
        *_prior_lines(res),
        _setup_text(suite),
        "",
        *_settings_table(res),
    ]


def _setup_text(suite: dict[str, Any]) -> str:
    """The suite's setup in one paragraph: data, model, schedule, seeds, the sweeps and the selection."""
    test_set = (
        f"the first {suite['test_subset']} test images (smoke test)"
        if suite.get("test_subset")
        else "the full 10,000-image test set"
    )
    test_set += (
        f" (evaluated at epoch 1, every {suite['test_every']}th and the last)"
        if suite.get("test_every", 1) > 1
        else ""
    )
    return (
        f"Setup: {suite['model']} on a random {suite['train_subset']}-image subset of the Fashion-MNIST "
        f"training set ({suite['train_subset'] - suite['val_size']} train + {suite['val_size']} validation with "
        f"clean labels), {test_set}; {suite['epochs']} epochs, batch {suite['batch_size']}, "
        f"SGD lr {suite['lr']} momentum 0.9 weight decay {suite['weight_decay']}, cosine to 0, "
        f"{'random crop' if suite['crop'] else 'no augmentation'}; fp32. Seeds {suite['seeds']} (a seed fixes "
        "the subset, the split, the label noise, the initialisation and the batch order: runs with the same "
        "seed are paired). SAM rho in "
        f"{suite['sam_rhos']}; F-SAM rho in {suite['fsam_rhos']} x lmbda in {suite['lmbdas']}, sigma 1. "
        "Selected per setting by the mean final validation accuracy over seeds (never the test set). "
        "Accuracies are final-epoch test accuracies (%), mean ± std over seeds; differences are paired "
        "per seed (mean ± std of the per-seed differences)." + _long_rows_text(suite)
    )


def _long_rows_text(suite: dict[str, Any]) -> str:
    """What the rows marked *long* are (empty where the suite has none)."""
    if not suite.get("long_settings"):
        return ""
    rhos = (
        f"SAM and F-SAM rho in {suite['long_rhos']} (lmbda {suite['long_lmbda']:g}) selected on validation"
        if suite.get("long_rhos")
        else f"SAM rho {suite['long_rho']:g} and F-SAM rho {suite['long_rho']:g} / lmbda "
        f"{suite['long_lmbda']:g} fixed in advance (no sweep)"
    )
    return (
        f" Rows marked *long*: the same setting with {suite['long_factor']}x the epochs, {rhos}, to check "
        "whether longer training, in which SGD memorises more of the noisy labels, changes the comparison."
    )


def _settings_table(res: dict[str, Any]) -> list[str]:
    """The main table: per setting, each method's test accuracy and the paired differences."""
    lines = [
        "| setting | SGD | SAM | F-SAM | F-SAM − SAM | SAM − SGD | selected SAM / F-SAM | n |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for setting, s in res["settings"].items():
        meths = s["methods"]
        n = "/".join(str(len(meths[k]["seeds"])) if k in meths else "0" for k in ("sgd", "sam", "fsam"))
        sel = f"{s['selected'].get('sam') or '–'} / {s['selected'].get('fsam') or '–'}"
        lines.append(
            f"| {SETTING_TITLES[setting]} | {_pm(meths.get('sgd', {}).get('test_acc_mean_std'))} | "
            f"{_pm(meths.get('sam', {}).get('test_acc_mean_std'))} | "
            f"{_pm(meths.get('fsam', {}).get('test_acc_mean_std'))} | "
            f"{_signed((s['fsam_minus_sam'] or {}).get('mean_std'))} | "
            f"{_signed((s['sam_minus_sgd'] or {}).get('mean_std'))} | {sel.replace('_', ' ')} | {n} |"
        )
    return lines


def _per_seed_lines(res: dict[str, Any]) -> list[str]:
    """Per-seed test accuracy of the selected configurations and the memorisation check."""
    lines = ["", "Per-seed test accuracy (%) of the selected configurations:", ""]
    lines += [
        "| setting | method | config | per seed (seed: acc) | final-epoch train acc on the noisy labels "
        "| share of correct training labels |",
        "|---|---|---|---|---:|---:|",
    ]
    for setting, s in res["settings"].items():
        for method in ("sgd", "sam", "fsam"):
            if method not in s["methods"]:
                continue
            r = s["methods"][method]
            per = ", ".join(
                f"{seed}: {acc:.2f}{'*' if seed in r.get('prior_seeds', ()) else ''}"
                for seed, acc in zip(r["seeds"], r["test_acc"])
            )
            lines.append(
                f"| {setting} | {METHOD_TITLES[method]} | {r['config'].replace('_', ' ')} | {per} | "
                f"{r['final_train_acc_mean']:.1f} | {r['clean_share_mean']:.1f} |"
            )
    lines += [
        "",
        "Memorisation check: SAM-type methods are expected to help most once SGD fits the wrong labels. While "
        "the training accuracy on the noisy labels stays below the share of correct labels, the network has "
        "not (on average) started to memorise them, and there is little for a flat-minimum method to prevent. "
        "(Training accuracy is the running mean over the last epoch, in training mode.)"
        + (
            " \\* marks a seed whose result comes from the `--prior` report." if res.get("from_prior") else ""
        ),
    ]
    return lines


def _equal_rho_lines(res: dict[str, Any], suite: dict[str, Any]) -> list[str]:
    """F-SAM - SAM at equal rho."""
    lines = [
        "",
        "F-SAM − SAM at equal rho (lmbda fixed, no selection advantage for F-SAM), test accuracy points:",
        "",
        "| setting | "
        + " | ".join(
            f"rho {r:g}, lmbda {lm:g}"
            for r in suite["fsam_rhos"]
            if r in suite["sam_rhos"]
            for lm in suite["lmbdas"]
        )
        + " |",
        "|---|"
        + "---:|" * sum(1 for r in suite["fsam_rhos"] if r in suite["sam_rhos"] for _ in suite["lmbdas"]),
    ]
    for setting, s in res["settings"].items():
        cells = []
        for r in suite["fsam_rhos"]:
            if r not in suite["sam_rhos"]:
                continue
            for lm in suite["lmbdas"]:
                e = s["fsam_minus_sam_equal_rho"].get(f"rho{r:g}_lmbda{lm:g}")
                cells.append(f"{_signed(e['mean_std'])} (n={len(e['seeds'])})" if e else "–")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return lines


def _sweep_lines(res: dict[str, Any]) -> list[str]:
    """The validation sweep."""
    lines = [
        "",
        "Validation sweep (final validation accuracy %, mean ± std over seeds; test accuracy for reference):",
        "",
        "| setting | config | n | val acc | test acc |",
        "|---|---|---:|---:|---:|",
    ]
    for setting, s in res["settings"].items():
        for name, e in s["sweep"].items():
            mark = " **(selected)**" if name in s["selected"].values() else ""
            lines.append(
                f"| {setting} | {name.replace('_', ' ')}{mark} | {e['n']} | {_pm(e['val_acc_mean_std'])} | "
                f"{_pm(e['test_acc_mean_std'])} |"
            )
    return lines


def _pto_lines(res: dict[str, Any], suite: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Ours vs pytorch-optimizer."""
    m = meta["machine"]
    lines: list[str] = []
    pto_rows = [(st, k, v) for st, s in res["settings"].items() for k, v in s["pytorch_optimizer"].items()]
    lines += [
        "",
        f"Ours vs pytorch-optimizer {m['pytorch_optimizer'] or ''} (same loop, same settings and seeds, "
        f"rho {suite['pto_rho']:g}, F-SAM lmbda {suite['pto_lmbda']:g}): test accuracy and the ratio of "
        "median epoch training times (runs that ran at different times on a shared machine: the cost benchmark "
        "has the careful interleaved per-step timing).",
        "",
        "| setting | optimizer | ours | pytorch-optimizer | ours − theirs | time theirs / ours | n |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for setting, kind, v in pto_rows:
        lines.append(
            f"| {setting} | {METHOD_TITLES[kind.removeprefix('pto-')]} | "
            f"{_pm(mean_std(v['ours_test_acc']))} | {_pm(mean_std(v['theirs_test_acc']))} | "
            f"{_signed(v['ours_minus_theirs'])} | {_pm(v['time_ratio_theirs_over_ours'], 3)} | {len(v['seeds'])} |"
        )
    if not pto_rows:
        lines.append("| – | – | – | – | – | – | 0 |")
    return lines


def markdown(res: dict[str, Any], suite: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = _summary_lines(res, suite, meta)
    lines += _per_seed_lines(res)
    lines += _equal_rho_lines(res, suite)
    lines += _sweep_lines(res)
    lines += _pto_lines(res, suite, meta)
    if meta.get("plot"):
        lines += ["", f"![test accuracy per setting]({meta['plot']})"]
    return "\n".join(lines) + "\n"


def _has_runs(res: dict[str, Any], setting: str) -> bool:
    """Every method's selected configuration has a run here (with learning curves, unlike --prior runs)."""
    selected = res["settings"][setting]["selected"]
    here = {(spec.setting, spec.config_name) for spec in res["_finished"]}
    return all(selected.get(m) and (setting, selected[m]) in here for m in ("sgd", "sam", "fsam"))


def plot(res: dict[str, Any], suite: dict[str, Any], path: Path) -> Path | None:
    try:
        fig = new_figure("the generalization plot", figsize=(11, 4), dpi=110)
    except PlottingUnavailable as exc:
        print(f"{exc}: no plot", flush=True)
        return None
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    _plot_bars(ax, res)
    _plot_curves(ax2, res)
    return save_figure(fig, path)


COLORS = {"sgd": "tab:gray", "sam": "tab:blue", "fsam": "tab:red"}


def _plot_bars(ax: Any, res: dict[str, Any]) -> None:
    """Test accuracy of each method's selected configuration per setting: mean ± std and the seeds."""
    colors, settings, width = COLORS, list(res["settings"]), 0.26
    for j, method in enumerate(("sgd", "sam", "fsam")):
        for i, setting in enumerate(settings):
            r = res["settings"][setting]["methods"].get(method)
            if not r:
                continue
            x = i + (j - 1) * width
            mean, std = r["test_acc_mean_std"]
            ax.bar(
                x,
                mean,
                width,
                yerr=std,
                color=colors[method],
                alpha=0.75,
                capsize=3,
                label=METHOD_TITLES[method] if i == 0 else None,
            )
            ax.scatter([x] * len(r["test_acc"]), r["test_acc"], color="black", s=8, zorder=3)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([SETTING_TITLES[s].replace(" noise", "\nnoise") for s in settings], fontsize=8)
    vals = [a for s in res["settings"].values() for r in s["methods"].values() for a in r["test_acc"]]
    if vals:
        ax.set_ylim(max(0.0, min(vals) - 5), min(100.0, max(vals) + 3))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("selected configuration per method (bars: mean ± std; dots: seeds)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _plot_curves(ax2: Any, res: dict[str, Any]) -> None:
    """Mean test and training accuracy per epoch of the selected configurations in one setting."""
    finished, colors, settings = res["_finished"], COLORS, list(res["settings"])
    # curves: the noisiest symmetric setting shows memorisation (test accuracy falling late in training)
    curve_setting = next(
        (
            s
            for s in ("sym40-long", "sym40", "sym20", "asym40", "clean")
            if s in settings and _has_runs(res, s)
        ),
        settings[0],
    )
    for method in ("sgd", "sam", "fsam"):
        name = res["settings"][curve_setting]["selected"].get(method)
        if not name:
            continue
        curves = [
            f["metrics"]
            for spec, f in finished.items()
            if spec.setting == curve_setting and spec.config_name == name
        ]
        if not curves:  # all its runs came from --prior (no per-epoch metrics)
            continue
        length = min(len(c) for c in curves)
        epochs = [m["epoch"] for m in curves[0][:length]]
        for key, style in (("test_acc", "o-"), ("train_acc", ":")):
            # the test set is evaluated on some epochs only (null, or NaN in older runs, elsewhere)
            points = [
                (e, statistics.fmean(c[i][key] for c in curves))
                for i, e in enumerate(epochs)
                if all(c[i][key] is not None and math.isfinite(c[i][key]) for c in curves)
            ]
            ax2.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                style,
                markersize=3,
                color=colors[method],
                label=f"{METHOD_TITLES[method]} {'test' if key == 'test_acc' else 'train (noisy)'}",
            )
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_title(f"{SETTING_TITLES[curve_setting]}: mean over seeds", fontsize=9)
    ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7)


def write_report(
    work_dir: Path,
    out_dir: Path,
    prefix: str,
    suite: dict[str, Any],
    prior: dict[str, Any],
    *,
    command: str,
    quick: bool,
    quiet: bool = False,
) -> dict[str, Any]:
    """Collect the finished runs under ``work_dir``; write ``<prefix>.md``, ``.json`` and ``.png`` to ``out_dir``."""
    res = collect(work_dir, suite, prior)
    png = out_dir / f"{prefix}.png"
    made = plot(res, suite, png) if res["finished"] else None
    meta = {
        "command": command,
        "quick": quick,
        "machine": benchkit.machine(threads_per_run=1),
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "plot": png.name if made else None,
    }
    text = markdown(res, suite, meta)
    public = {k: v for k, v in res.items() if not k.startswith("_")}
    payload = {"meta": meta, "suite": suite, **public}
    benchkit.write_report(out_dir, prefix, text, payload)
    if not quiet:
        print(text)
    return payload
