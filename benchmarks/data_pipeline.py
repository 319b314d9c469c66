"""What the `fsam train` pipeline costs over a bare training loop.

Side by side in one process, interleaved, median of repeats:
  * pipeline: ``friendly_sam.train.train`` for one epoch (loader: index, batched crop/flip augmentation,
    normalisation; the step; metrics; scheduler; with and without the progress bar). Its own
    ``images_per_s`` counts the training part only (not data loading at start-up or evaluation).
  * bare: the same model, batch size, optimizer and ``training_step`` over float batches already prepared in
    memory (no indexing, no augmentation, no bookkeeping).
Target: the pipeline costs at most 10 % (ratio >= 0.90).

    python -m benchmarks.data_pipeline [--model resnet8] [--method base] [--images 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stderr
from pathlib import Path

import torch

from benchmarks import benchkit
from friendly_sam.data import load_dataset
from friendly_sam.models import build_model
from friendly_sam.train import TrainConfig, build_optimizer, train, training_step

Batch = tuple[torch.Tensor, torch.Tensor]  # images, labels


def bare_loop(cfg: TrainConfig, batches: list[Batch]) -> float:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, 10, 1)
    model.train()
    optimizer = build_optimizer(cfg, model)
    start = time.perf_counter()
    for x, y in batches:
        training_step(model, optimizer, x, y)
    return sum(len(y) for _, y in batches) / (time.perf_counter() - start)


def pipeline(cfg: TrainConfig, progress: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp, redirect_stderr(io.StringIO()):
        summary = train(cfg, Path(tmp) / "run", progress=progress, log=lambda _: None)
    return summary["mean_images_per_s"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--method", default="base", help="base (plain SGD, the cheapest step: the harshest test) or fsam")
    parser.add_argument("--images", type=int, default=4096, help="training images per measured epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def _batches(images: int, batch_size: int) -> list[Batch]:
    """The first ``images`` Fashion-MNIST training images, normalised, in one seeded order, as batches."""
    ds = load_dataset("fashion-mnist")
    gen = torch.Generator().manual_seed(0)
    x = ds.train_images[:images].float().div(255).sub(ds.mean[0]).div(ds.std[0])
    labels = ds.train_labels[:images]
    order = torch.randperm(images, generator=gen)
    return [(x[i].contiguous(), labels[i]) for i in order.split(batch_size)]


def _measure(cfg: TrainConfig, batches: list[Batch], repeats: int) -> dict[str, list[float]]:
    """Images per second of each loop, ``repeats`` times, interleaved."""
    results: dict[str, list[float]] = {"bare": [], "pipeline (quiet)": [], "pipeline (progress bar)": []}
    bare_loop(cfg, batches[:3])  # warm-up
    for _ in range(repeats):  # interleaved: machine drift hits all contenders alike
        results["bare"].append(bare_loop(cfg, batches))
        results["pipeline (quiet)"].append(pipeline(cfg, progress=False))
        results["pipeline (progress bar)"].append(pipeline(cfg, progress=True))
    return results


def main() -> None:
    args = _parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        dataset="fashion-mnist",
        model=args.model,
        method=args.method,
        epochs=1,
        batch_size=args.batch_size,
        train_subset=args.images,
        test_subset=256,
    ).validate()
    results = _measure(cfg, _batches(args.images, args.batch_size), args.repeats)
    base = statistics.median(results["bare"])
    commit = benchkit.git_commit()
    print(
        f"model {args.model}, method {args.method}, batch {args.batch_size}, {args.images} images/epoch, "
        f"{args.repeats} repeats, torch {torch.__version__}, {torch.get_num_threads()} threads, commit {commit}"
    )
    print("| loop | median img/s | runs | ratio to bare |")
    print("|---|---|---|---|")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.0f} | {', '.join(f'{v:.0f}' for v in values)} | {med / base:.3f} |")
    if args.json:
        payload = {"args": vars(args) | {"json": str(args.json)}, "results": results, "commit": commit}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**payload, "machine": benchkit.machine()}, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
