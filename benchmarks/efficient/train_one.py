"""Train one run of the efficient-F-SAM benchmark (started by run.py in its own single-thread process).

Usage: ``python -m benchmarks.efficient.train_one '<{"spec": ..., "suite": ...}>' <run-dir> [--resume]
[--data-dir DIR]``. Kept apart from run.py so that a run never imports the report code."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.efficient.plan import VariantSpec, variant_config
from benchmarks.generalization.run import SparseTestEvaluation
from friendly_sam.train import train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("payload")
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    raw = json.loads(args.payload)
    spec, suite = VariantSpec(**raw["spec"]), raw["suite"]
    cfg = variant_config(spec, suite, args.data_dir)
    sparse = SparseTestEvaluation(cfg.epochs, suite.get("test_every") or 1, suite.get("test_subset"))
    t0 = time.time()
    train(
        cfg,
        args.run_dir,
        resume=args.resume,
        progress=False,
        log=lambda m: print(m, flush=True),
        callbacks=[sparse],
    )
    print(f"finished in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
