"""The GPU questions of issue 22 in one command: trainer images/s against a bare torch loop, and the cost of
one whole training step (forward/backward twice + update) for ours / the official F-SAM / davda54 SAM /
pytorch-optimizer, eager vs ``torch.compile`` vs CUDA-graph-captured, side by side on one device.
Modes: ``eager``; ``compiled`` (``torch.compile(step)``: the backward passes break the graph); ``whole`` (the
whole two-pass step, both backward passes included, as ONE ``fullgraph=True`` graph with
``torch._dynamo.config.trace_autograd_ops``: ours in capturable mode, docs/gpu.md); ``graph`` (CUDA graph).

    python -m benchmarks.gpu.trainer_speed --device cuda --json out.json      # the GPU run (< 5 min)
    python -m benchmarks.gpu.trainer_speed --device cpu --size tiny           # smoke size (tests/benchmarks)

Steps are timed interleaved round-robin over the contenders after warm-up (compilation and capture happen
there), each one synchronised (``torch.cuda.synchronize``), median over repeats. A mode a contender cannot run
(graph capture of a step that syncs or rebinds ``p.data``; capture off CUDA) is reported as such, never
guessed; so is one not built because ``--budget-s`` (240 s) had passed, which keeps the run under 5 minutes of
device time. Trainer images/s: ``fsam train``'s loop (``friendly_sam.train.train``, epoch 2 of 2) against a loop of
the same model, optimizer and loader written by hand, both on the same in-memory Fashion-MNIST subset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.gpu.reference_sam import Davda54SAM, OfficialFSAM
from friendly_sam.models import build_model
from friendly_sam.optim import SAM, FriendlySAM
from friendly_sam.train import TrainConfig, build_optimizer, prepare_data, train

SIZES = {  # model, channels, image side, batch, trainer subset, step repeats
    "full": ("resnet18", 3, 32, 128, 12800, 30),
    "tiny": ("cnn_small", 1, 28, 16, 128, 3),
}
SGD_KW = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
# compiled by default (each compilation of a ResNet-18 two-pass step costs ~a minute of device time):
# SGD, ours capturable, and the template the official code and davda54 share; --compile all for every one
COMPILED = ("SGD", "ours F-SAM capturable", "davda54 SAM")
Step = Callable[[Tensor, Tensor], Tensor]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def two_pass_step(model: nn.Module, opt: Any) -> Step:
    """The hand-written loop every SAM library documents (zero_grad inside the step)."""

    def step(x: Tensor, y: Tensor) -> Tensor:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.first_step(zero_grad=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
        return loss.detach()

    return step


def sgd_step(model: nn.Module, opt: torch.optim.Optimizer) -> Step:
    def step(x: Tensor, y: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def optimizers() -> dict[str, Callable[[nn.Module], Any]]:
    fsam_kw = {"rho": 0.2, "sigma": 1.0, "lmbda": 0.6, **SGD_KW}
    made: dict[str, Callable[[nn.Module], Any]] = {
        "SGD": lambda m: torch.optim.SGD(m.parameters(), **SGD_KW),
        "ours F-SAM": lambda m: FriendlySAM(m.parameters(), torch.optim.SGD, **fsam_kw),
        "ours F-SAM capturable": lambda m: FriendlySAM(
            m.parameters(), torch.optim.SGD, capturable=True, **fsam_kw
        ),
        "ours SAM capturable": lambda m: SAM(
            m.parameters(), torch.optim.SGD, rho=0.05, capturable=True, **SGD_KW
        ),
        "official F-SAM": lambda m: OfficialFSAM(m.parameters(), torch.optim.SGD, **fsam_kw),
        "davda54 SAM": lambda m: Davda54SAM(m.parameters(), torch.optim.SGD, rho=0.05, **SGD_KW),
    }
    try:
        from pytorch_optimizer import FriendlySAM as PtoFriendlySAM

        made["pytorch-optimizer F-SAM"] = lambda m: PtoFriendlySAM(m.parameters(), torch.optim.SGD, **fsam_kw)
    except ImportError:
        pass
    return made


def capture_graph(step: Step, x: Tensor, y: Tensor) -> Step:
    """The step captured once into a CUDA graph (warm-up on a side stream, as torch's docs do); replays it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step(x, y)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(x, y)

    def replay(xb: Tensor, yb: Tensor) -> Tensor:
        graph.replay()  # on the captured (static) x, y: the benchmark feeds the same batch
        return out

    return replay


def whole_step(step: Step, backend: str) -> Step:
    """The whole step, backward passes included, as one ``fullgraph=True`` graph (the recipe of docs/gpu.md);
    torch's own optimizers refuse it (their step breaks the graph on purpose): reported as an error row."""
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        raise RuntimeError("this torch cannot trace backward() in a compiled region (trace_autograd_ops)")
    compiled = torch.compile(step, backend=backend, fullgraph=True)

    def run(x: Tensor, y: Tensor) -> Tensor:
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return compiled(x, y)

    return run


def build_step(
    name: str,
    mode: str,
    device: torch.device,
    size: str,
    compiled: tuple[str, ...],
    backend: str = "inductor",
) -> Step:
    model_name, channels, side, batch, _, _ = SIZES[size]
    if mode in ("compiled", "whole") and name not in compiled:
        raise RuntimeError("not compiled in this run (device time): --compile all compiles every contender")
    torch.manual_seed(0)
    model = build_model(model_name, 10, channels).to(device)
    opt = optimizers()[name](model)
    step = sgd_step(model, opt) if name == "SGD" else two_pass_step(model, opt)
    capturable = name == "SGD" or "capturable" in name
    if mode == "compiled":
        return torch.compile(
            step, backend=backend
        )  # backward() breaks the graph: fullgraph only for the optimizer steps
    if mode == "whole":
        return whole_step(step, backend)
    if mode == "graph":
        if device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        if not capturable:
            raise RuntimeError("the step synchronises with the host or rebinds p.data: not capturable")
        x = torch.randn(batch, channels, side, side, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        return capture_graph(step, x, y)
    return step


def step_costs(
    device: torch.device,
    size: str,
    modes: list[str],
    warmup: int,
    compiled: tuple[str, ...],
    backend: str = "inductor",
    deadline: float = float("inf"),
    repeats: int | None = None,
) -> list[dict[str, Any]]:
    """Build every (contender, mode) (mode by mode: compilation, the costly one, last by default) until
    ``deadline`` (``time.perf_counter()``), then time the built ones interleaved."""
    _, channels, side, batch, _, size_repeats = SIZES[size]
    repeats = repeats or size_repeats
    x = torch.randn(batch, channels, side, side, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steps, rows = {}, []
    for mode in modes:
        for name in optimizers():
            if time.perf_counter() > deadline:
                rows.append(
                    {"contender": name, "mode": mode, "error": "over the device-time budget (--budget-s)"}
                )
                continue
            try:
                step = build_step(name, mode, device, size, compiled, backend)
                for _ in range(warmup):  # compilation happens here
                    step(x, y)
                _sync(device)
                steps[(name, mode)] = step
            except Exception as error:  # reported as a row: what cannot run is said, never timed
                rows.append(
                    {"contender": name, "mode": mode, "error": " ".join(f"{type(error).__name__}: {error}".split())[:160]}
                )
    times: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
    keys = list(steps)
    for r in range(repeats if keys else 0):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            _sync(device)
            t0 = time.perf_counter()
            steps[key](x, y)
            _sync(device)
            times[key].append(time.perf_counter() - t0)
    base = statistics.median(times[("SGD", "eager")]) if ("SGD", "eager") in times else None
    for (name, mode), ts in times.items():
        ms = 1e3 * statistics.median(ts)
        rows.append(
            {
                "contender": name,
                "mode": mode,
                "ms": ms,
                "ratio_to_sgd_eager": ms / (1e3 * base) if base else None,
            }
        )
    return rows


def bare_images_per_s(cfg: TrainConfig, device: torch.device) -> float:
    """The same model, optimizer and loader as the trainer, in a hand-written loop; epoch 2 of 2 timed."""
    data = prepare_data(cfg, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, data.in_channels).to(device)
    opt = build_optimizer(cfg, model)
    step = sgd_step(model, opt) if cfg.method == "base" else two_pass_step(model, opt)
    model.train()
    for epoch in range(2):
        data.train_loader.set_epoch(epoch)
        _sync(device)
        t0, seen = time.perf_counter(), 0
        for x, y in data.train_loader:
            step(x, y)
            seen += len(y)
        _sync(device)
    return seen / (time.perf_counter() - t0)


def trainer_speed(device: torch.device, size: str, data_dir: str) -> list[dict[str, Any]]:
    model_name, _, _, batch, subset, _ = SIZES[size]
    rows = []
    for method in ("base", "fsam"):
        cfg = TrainConfig(
            dataset="fashion-mnist",
            data_dir=data_dir,
            model="resnet20" if size == "full" else model_name,
            epochs=2,
            train_subset=subset,
            test_subset=batch,
            batch_size=batch,
            device=str(device),
            method=method,
        ).validate()
        with tempfile.TemporaryDirectory() as tmp:
            summary = train(cfg, Path(tmp) / "run", progress=False, log=lambda m: None)
            ours = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])[
                "images_per_s"
            ]
        bare = bare_images_per_s(cfg, device)
        rows.append(
            {
                "method": method,
                "model": cfg.model,
                "batch": batch,
                "trainer_images_per_s": ours,
                "bare_images_per_s": bare,
                "trainer_over_bare": ours / bare,
                "world_size": summary["world_size"],
            }
        )
    return rows


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"device: {res['device']}, torch {res['torch']}, size {res['size']}",
        "",
        "| method | model | batch | trainer img/s | bare loop img/s | trainer / bare |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["trainer"]:
        lines.append(
            f"| {r['method']} | {r['model']} | {r['batch']} | {r['trainer_images_per_s']:.0f} | "
            f"{r['bare_images_per_s']:.0f} | {r['trainer_over_bare']:.3f} |"
        )
    lines += ["", "| contender | mode | step ms | / SGD eager |", "|---|---|---|---|"]
    for r in res["steps"]:
        if "error" in r:
            lines.append(f"| {r['contender']} | {r['mode']} | not run: {r['error']} | |")
        else:
            ratio = "" if r["ratio_to_sgd_eager"] is None else f"{r['ratio_to_sgd_eager']:.2f}"
            lines.append(f"| {r['contender']} | {r['mode']} | {r['ms']:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--modes", default="eager,compiled,whole,graph", help="comma-separated: eager,compiled,whole,graph"
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend ('eager': trace only)")
    parser.add_argument("--compile", default=",".join(COMPILED), help="contenders to compile, or 'all'")
    parser.add_argument(
        "--data-dir", default=os.environ.get("FSAM_DATA_DIR", "/usr/share/datasets") + "/fashion-mnist"
    )
    parser.add_argument("--repeats", type=int, help="timed rounds of the step costs (default: by --size)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU runs)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop building contenders after this")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    deadline = time.perf_counter() + args.budget_s
    device = torch.device(args.device)
    compiled = tuple(optimizers()) if args.compile == "all" else tuple(args.compile.split(","))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "size": args.size,
        "trainer": trainer_speed(device, args.size, args.data_dir),
        "steps": step_costs(
            device, args.size, args.modes.split(","), args.warmup, compiled, args.backend, deadline, args.repeats
        ),
    }
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
