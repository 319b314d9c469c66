"""Per-iteration cost of SGD, SAM and F-SAM in real training steps on a CUDA GPU.

Forward + backward (twice for SAM/F-SAM) + optimizer step via ``friendly_sam.train.training_step``,
interleaved round-robin over the contenders after warm-up, CUDA-synchronised wall time per step,
median over repeats; peak memory = ``torch.cuda.max_memory_allocated`` during each contender's steps.

    python -m benchmarks.gpu.step_cost_cuda [--repeats 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from friendly_sam.models import build_model
from friendly_sam.optim import SAM, FriendlySAM
from friendly_sam.train import training_step

SETTINGS = [("resnet18", 3, 32, 10, 128), ("resnet20", 1, 28, 10, 128)]


def make(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    kw = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), **kw)
    if kind == "sam":
        return SAM(model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    return FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.2, sigma=1.0, lmbda=0.6, **kw)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "bf16": args.bf16, "rows": []}
    for name, channels, size, classes, batch in SETTINGS:
        x = torch.randn(batch, channels, size, size, device=dev)
        y = torch.randint(0, classes, (batch,), device=dev)
        contenders = {}
        for kind in ("sgd", "sam", "fsam"):
            torch.manual_seed(0)
            model = build_model(name, classes, channels).to(dev)
            contenders[kind] = (model, make(kind, model))
        times = {k: [] for k in contenders}
        peaks = {}
        for r in range(args.warmup + args.repeats):
            order = list(contenders)[r % 3 :] + list(contenders)[: r % 3]
            for kind in order:
                model, opt = contenders[kind]
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                training_step(model, opt, x, y, bf16=args.bf16)
                torch.cuda.synchronize()
                if r >= args.warmup:
                    times[kind].append(time.perf_counter() - t0)
                    peaks[kind] = max(peaks.get(kind, 0), torch.cuda.max_memory_allocated())
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "model": name,
            "input": f"{channels}x{size}x{size}",
            "batch": batch,
            "ms": {k: 1e3 * v for k, v in med.items()},
            "ratio_to_sgd": {k: v / med["sgd"] for k, v in med.items()},
            "fsam_over_sam": med["fsam"] / med["sam"],
            "peak_mib": {k: v / 2**20 for k, v in peaks.items()},
        }
        out["rows"].append(row)
        print(json.dumps(row))
    print(
        "| model | input | batch | SGD ms | SAM ms | F-SAM ms | SAM/SGD | F-SAM/SAM | peak MiB SGD/SAM/F-SAM |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in out["rows"]:
        ms, pk = r["ms"], r["peak_mib"]
        print(
            f"| {r['model']} | {r['input']} | {r['batch']} | {ms['sgd']:.2f} | {ms['sam']:.2f} | {ms['fsam']:.2f} | "
            f"{r['ratio_to_sgd']['sam']:.2f} | {r['fsam_over_sam']:.3f} | "
            f"{pk['sgd']:.0f}/{pk['sam']:.0f}/{pk['fsam']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
