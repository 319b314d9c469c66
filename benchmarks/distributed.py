"""F-SAM under DDP: step time with 1 vs 2 processes, and bytes all-reduced per step in each mode.

    python -m benchmarks.distributed [--model resnet8] [--batch-size 128] [--steps 10]

Measures, on random 28x28 grey images (the data do not matter for speed), one training step of the
global batch:

* one process with 2 threads and with 1 thread (``training_step``);
* two processes with 1 thread each (DDP over gloo on CPU; each process gets half the global batch),
  for plain SGD and for F-SAM in ``per-replica`` and ``synchronized`` mode.

Communication is counted, not estimated: a DDP comm hook adds up the bytes of every gradient bucket
all-reduced per step, and DDP's buffer broadcasts (BatchNorm statistics, from rank 0) are counted by
wrapping its ``_sync_buffers``. Writes ``docs/results/distributed.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from benchmarks import benchkit
from friendly_sam import FriendlySAM
from friendly_sam.distributed import AllReduceCounter
from friendly_sam.models import build_model
from friendly_sam.train.step import ddp_training_step, training_step

ROOT = Path(__file__).resolve().parent.parent
MODES = {"sgd (plain DDP)": ("sgd", "synchronized"), "fsam per-replica": ("fsam", "per-replica")}
MODES["fsam synchronized"] = ("fsam", "synchronized")


def make(model_name: str, optimizer: str, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = build_model(model_name, 10, 1)
    if optimizer == "sgd":
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, FriendlySAM(model.parameters(), torch.optim.SGD, lr=0.01, momentum=0.9, rho=0.1, lmbda=0.6)


def data(batch: int, steps: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
        for _ in range(steps)
    ]


def time_steps(step, batches, warmup: int, barrier=lambda: None) -> float:
    for x, y in batches[:warmup]:
        step(x, y)
    barrier()
    t0 = time.perf_counter()
    for x, y in batches[warmup:]:
        step(x, y)
    barrier()
    return (time.perf_counter() - t0) / (len(batches) - warmup)


def single_process(args: argparse.Namespace, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    out = {}
    for label, (optimizer, _) in MODES.items():
        if label.endswith("synchronized"):
            continue  # one process: there is only one F-SAM step
        model, opt = make(args.model, optimizer)
        batches = data(args.batch_size, args.steps + args.warmup)
        out[label.split(" ")[0]] = time_steps(
            lambda x, y, model=model, opt=opt: training_step(model, opt, x, y), batches, args.warmup
        )
    return out


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=f"file://{args.worker}", rank=rank, world_size=world)
    results = {}
    for label, (optimizer, mode) in MODES.items():
        model, opt = make(args.model, optimizer)
        net = nn.parallel.DistributedDataParallel(model)
        counter = AllReduceCounter(net)
        broadcasts = {"n": 0}
        sync_buffers = net._sync_buffers

        def counted(sync_buffers=sync_buffers, broadcasts=broadcasts) -> None:
            broadcasts["n"] += 1
            sync_buffers()

        net._sync_buffers = counted
        batches = [
            (torch.tensor_split(x, world)[rank], torch.tensor_split(y, world)[rank])
            for x, y in data(args.batch_size, args.steps + args.warmup)
        ]

        def step(x, y, net=net, opt=opt, mode=mode) -> None:
            ddp_training_step(net, opt, x, y, mode=mode, global_batch_size=args.batch_size)

        seconds = time_steps(step, batches, args.warmup, barrier=dist.barrier)
        steps = args.steps + args.warmup
        buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
        results[label] = {
            "step_s": seconds,
            "allreduce_bytes_per_step": counter.bytes / steps,
            "allreduce_calls_per_step": counter.calls / steps,
            "buffer_broadcasts_per_step": broadcasts["n"] / steps,
            "buffer_broadcast_bytes_per_step": broadcasts["n"] / steps * buffer_bytes,
        }
    if rank == 0:
        Path(args.worker).with_suffix(".json").write_text(json.dumps(results))
    dist.destroy_process_group()


def two_processes(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        rdzv = Path(tmp) / "rdzv"
        cmd = [
            *benchkit.python_module(__spec__.name),
            "--worker",
            str(rdzv),
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ]
        env = benchkit.src_env(WORLD_SIZE="2", OMP_NUM_THREADS="1")
        procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}, cwd=benchkit.REPO) for r in range(2)]
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError("a benchmark worker failed")
        return json.loads(rdzv.with_suffix(".json").read_text())


def markdown(args: argparse.Namespace, result: dict) -> str:
    """The report of one measurement (``result`` as written to the JSON file)."""
    one, two = result["one_process_step_s"], result["two_processes_step_s_and_comm"]
    grad_bytes, buffer_bytes = result["gradient_bytes"], result["buffer_bytes"]
    load_before = result["load_average_before"]
    b = args.batch_size
    lines = [
        "# F-SAM under DDP: step time and communication",
        "",
        f"`python -m benchmarks.distributed` — model `{args.model}` (1x28x28 input), global batch {b}, "
        f"{args.steps} timed steps after {args.warmup} warm-up steps, gloo on CPU. "
        f"Machine: {result['machine']['cpu']}, torch {result['machine']['torch']}; load average "
        f"{load_before[0]:.1f} before, {result['load_average_after'][0]:.1f} after (the machine is shared).",
        "",
        "## Step time (one step of the global batch)",
        "",
        "| setting | optimizer | ms / step | images / s |",
        "|---|---|---:|---:|",
    ]
    for setting, times in one.items():
        for opt_name, s in times.items():
            lines.append(f"| 1 process, {setting} | {opt_name} | {1e3 * s:.0f} | {b / s:.0f} |")
    for label, r in two.items():
        lines.append(
            f"| 2 processes x 1 thread | {label} | {1e3 * r['step_s']:.0f} | {b / r['step_s']:.0f} |"
        )
    lines += [
        "",
        "## Communication per step (counted)",
        "",
        f"Gradient size: {grad_bytes:,} bytes (fp32); BatchNorm buffers: {buffer_bytes:,} bytes.",
        "",
        "| mode | bytes all-reduced | all-reduce calls (buckets) | buffer broadcasts | buffer bytes broadcast |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, r in two.items():
        lines.append(
            f"| {label} | {r['allreduce_bytes_per_step']:,.0f} ({r['allreduce_bytes_per_step'] / grad_bytes:.1f}x gradient) "
            f"| {r['allreduce_calls_per_step']:.0f} | {r['buffer_broadcasts_per_step']:.0f} | {r['buffer_broadcast_bytes_per_step']:,.0f} |"
        )
    lines += [
        "",
        "Per-replica F-SAM all-reduces exactly what plain DDP does (one gradient per step); synchronized "
        "F-SAM twice that, plus a second broadcast of the BatchNorm buffers (before the second forward). "
        f"This machine has {os.cpu_count()} CPU cores (shared with other users: see the load average). "
        "2 processes x 1 thread use the same 2 cores as 1 process x 2 threads: that comparison shows "
        "the overhead of DDP over threads, 1 thread vs 2 processes the gain from a second worker. "
        "Neither is the scaling of a multi-GPU node, where the byte counts above are what costs time.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "distributed"))
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    load_before = os.getloadavg()
    model, _ = make(args.model, "sgd")
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    one = {f"{t} thread{'s' if t > 1 else ''}": single_process(args, t) for t in (2, 1)}
    two = two_processes(args)
    result = {
        "model": args.model,
        "global_batch": args.batch_size,
        "steps_timed": args.steps,
        "gradient_bytes": grad_bytes,
        "buffer_bytes": buffer_bytes,
        "one_process_step_s": one,
        "two_processes_step_s_and_comm": two,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": benchkit.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    text = markdown(args, result)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
