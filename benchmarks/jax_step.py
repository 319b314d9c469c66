"""The jitted JAX training step: F-SAM (``friendly_sam.jax``) vs ``optax.contrib.sam`` vs plain SGD.

Each contender is one ``jax.jit``-compiled function doing a whole training step (forward, backward,
optimizer) on the same MLP (784-W-W-10, fp32) and the same fixed batch:

* ``sgd``: one gradient, ``optax.sgd`` (momentum 0.9) with weight decay: the one-pass baseline;
* ``optax.contrib.sam``: its opaque mode with its documented adversary ``chain(normalize(), sgd(rho))``;
* ``friendly_sam.jax.sam``, ``friendly_sam.jax.fsam``: ours, opaque mode (one ``update`` with ``grad_fn``);
* ``fsam hand-written``: the two-gradient step written out with ``fsam_perturbation``.

Compilation is done (and excluded) first; then ``--repeats`` rounds, each timing ``--steps`` steps of
every contender in turn (interleaved, rotating start, ``block_until_ready``); median and IQR of the
per-step time; ratio = median / median of ``sgd``, and of ``optax.contrib.sam``. Held state: bytes of the
optimizer state between steps. Wall and process CPU time are both recorded (the latter is less sensitive
to other processes on a shared machine). Before timing, one step from the same start checks what the
contenders compute (ours vs the hand-written step: equal; our SAM vs optax's: equal to float32 rounding).

    python benchmarks/jax_step.py --repeats 30 --markdown docs/results/jax_step.md --json docs/results/jax_step.json
    python benchmarks/jax_step.py --quick          # smoke run (tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from friendly_sam.jax import fsam, fsam_perturbation, sam

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the shared kit
import benchkit  # noqa: E402

LR, MOMENTUM, WD, RHO, SIGMA, LMBDA = 0.05, 0.9, 5e-4, 0.05, 1.0, 0.6


def mlp_params(width: int, seed: int = 0) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), 3)
    sizes = [(784, width), (width, width), (width, 10)]
    return {
        f"layer{i}": {"w": jax.random.normal(k, s) / np.sqrt(s[0]), "b": jnp.zeros(s[1])}
        for i, (k, s) in enumerate(zip(keys, sizes))
    }


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    h = x
    for i in range(len(params)):
        h = h @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"]
        h = jax.nn.relu(h) if i < len(params) - 1 else h
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def _base() -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM))


def contenders() -> dict[str, tuple[Any, Any]]:
    """name -> (init(params) -> state, step(params, state, x, y) -> (params, state)), not yet jitted."""
    grad = jax.grad(loss_fn)

    def one_call(tx):
        def step(p, s, x, y):
            u, s = tx.update(grad(p, x, y), s, p, grad_fn=lambda q, _: grad(q, x, y))
            return optax.apply_updates(p, u), s

        return tx.init, step

    def sgd_step(p, s, x, y):
        u, s = base.update(grad(p, x, y), s, p)
        return optax.apply_updates(p, u), s

    base, perturbation = _base(), fsam_perturbation(RHO, SIGMA, LMBDA)

    def hand_written(p, s, x, y):
        e, ps = perturbation.update(grad(p, x, y), s[0], p)
        u, os = base.update(grad(optax.apply_updates(p, e), x, y), s[1], p)
        return optax.apply_updates(p, u), (ps, os)

    optax_adversary = optax.chain(optax.contrib.normalize(), optax.sgd(RHO))
    return {
        "sgd": (base.init, sgd_step),
        "optax.contrib.sam": one_call(optax.contrib.sam(_base(), optax_adversary, opaque_mode=True)),
        "friendly_sam.jax.sam": one_call(sam(_base(), RHO)),
        "friendly_sam.jax.fsam": one_call(fsam(_base(), RHO, SIGMA, LMBDA)),
        "fsam hand-written": (lambda p: (perturbation.init(p), base.init(p)), hand_written),
    }


def held_bytes(state: Any) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Compile every contender, check what they compute (one step from the same start), then time them."""
    params = mlp_params(args.width)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch_size, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=args.batch_size), jnp.int32)
    runs = {}
    for name, (init, step) in contenders().items():
        step = jax.jit(step, donate_argnums=(0, 1))
        start = time.perf_counter()
        p, state = jax.block_until_ready(step(jax.tree.map(jnp.copy, params), init(params), x, y))
        runs[name] = {"step": step, "params": p, "state": state, "compile_s": time.perf_counter() - start}
    first = {name: jax.tree.map(np.asarray, run["params"]) for name, run in runs.items()}
    times = {name: {"wall": [], "cpu": []} for name in runs}
    names = list(runs)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = runs[name]
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                run["params"], run["state"] = run["step"](run["params"], run["state"], x, y)
            jax.block_until_ready(run["params"])
            times[name]["wall"].append((time.perf_counter() - wall) / args.steps)
            times[name]["cpu"].append((time.process_time() - cpu) / args.steps)
    return {"runs": runs, "times": times, "first_step": first}


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    runs, times, first = measured["runs"], measured["times"], measured["first_step"]
    median = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    rows = []
    for name, t in times.items():
        q = np.percentile(t["wall"], [25, 75])
        rows.append(
            {
                "contender": name,
                "median_ms": 1e3 * median[name]["wall"],
                "iqr_ms": [1e3 * q[0], 1e3 * q[1]],
                "cpu_median_ms": 1e3 * median[name]["cpu"],
                "vs_sgd": median[name]["wall"] / median["sgd"]["wall"],
                "vs_optax_sam": median[name]["wall"] / median["optax.contrib.sam"]["wall"],
                "cpu_vs_sgd": median[name]["cpu"] / median["sgd"]["cpu"],
                "cpu_vs_optax_sam": median[name]["cpu"] / median["optax.contrib.sam"]["cpu"],
                "held_state_bytes": held_bytes(runs[name]["state"]),
                "compile_s": runs[name]["compile_s"],
            }
        )

    def max_diff(a: str, b: str) -> float:
        return max(
            float(np.max(np.abs(u - v))) for u, v in zip(jax.tree.leaves(first[a]), jax.tree.leaves(first[b]))
        )

    checks = {
        "first step: fsam vs hand-written (max abs param diff)": max_diff(
            "friendly_sam.jax.fsam", "fsam hand-written"
        ),
        "first step: our sam vs optax.contrib.sam (max abs param diff)": max_diff(
            "friendly_sam.jax.sam", "optax.contrib.sam"
        ),
        "first step: fsam vs our sam (F-SAM's first step is SAM's: equal to float32 rounding)": max_diff(
            "friendly_sam.jax.fsam", "friendly_sam.jax.sam"
        ),
    }
    return {"rows": rows, "checks": checks}


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# JAX training step: F-SAM vs optax.contrib.sam vs SGD",
        "",
        f"`{meta['command']}`",
        "",
        f"MLP 784-{meta['width']}-{meta['width']}-10 fp32, batch {meta['batch_size']}, jax {jax.__version__}, "
        f"optax {optax.__version__}, {meta['machine'].get('cpu_count')} CPUs, load average "
        f"{meta['machine'].get('load_average')}; {meta['repeats']} interleaved rounds of {meta['steps']} steps.",
        "",
        "| contender | wall ms/step (median) | IQR | vs SGD | vs optax.contrib.sam | CPU ms/step | CPU vs SGD "
        "| CPU vs optax.contrib.sam | held state (bytes) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['contender']} | {r['median_ms']:.3f} | {r['iqr_ms'][0]:.3f}-{r['iqr_ms'][1]:.3f} | "
            f"{r['vs_sgd']:.2f} | {r['vs_optax_sam']:.2f} | {r['cpu_median_ms']:.3f} | {r['cpu_vs_sgd']:.2f} | "
            f"{r['cpu_vs_optax_sam']:.2f} | {r['held_state_bytes']:,} |"
        )
    lines += [
        "",
        "CPU ms/step: process CPU time (all threads) per step, less sensitive than wall time to other processes "
        "on a shared machine. Checks (one step from the same start, before timing):",
        "",
    ]
    lines += [f"- {k}: {v:.3g}" for k, v in summary["checks"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--quick", action="store_true", help="tiny and short: a smoke run, not a measurement")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.repeats, args.steps = 32, 2, 2
    summary = summarize(measure(args))
    meta = {
        "command": "python benchmarks/jax_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": benchkit.machine(
            jax=jax.__version__, optax=optax.__version__, jax_devices=str(jax.devices())
        ),
        **{k: getattr(args, k) for k in ("width", "batch_size", "repeats", "steps", "quick")},
    }
    text = markdown(summary, meta)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, **summary}, indent=1) + "\n")
    return {"meta": meta, **summary}


if __name__ == "__main__":
    main()
