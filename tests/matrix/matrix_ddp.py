"""The matrix's 2-process DDP column (gloo, CPU): the entry points that run under DDP here, in one pair of
worker processes, against a one-process simulation of the two replicas.

Run as a worker (``python matrix_ddp.py RDZV OUT`` with ``RANK``/``WORLD_SIZE``) it trains the matrix net
through each entry point on its half of every batch and writes the final state dicts. The simulation
(:func:`simulate`) is the reference update of docs/distributed.md: *synchronized*: one perturbation from
the all-reduced clean gradient; *per-replica*: each replica perturbs with its own clean gradient (and keeps
its own F-SAM EMA); both: the perturbed gradients averaged, one base step. BatchNorm buffers: rank 0's are
updated by rank 0's clean forwards only (DDP broadcasts rank 0's buffers), compared on rank 0.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

WORLD = 2
MODES = {
    "hand loop": "synchronized",
    "training_step": "per-replica",
    "step(closure)": "synchronized",
    "AcceleratedSAM": "synchronized",
}


def shard(batch: tuple[torch.Tensor, torch.Tensor], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = len(batch[1]) // WORLD
    return batch[0][rank * size : (rank + 1) * size], batch[1][rank * size : (rank + 1) * size]


def simulate(mode: str) -> dict[str, torch.Tensor]:
    """Rank 0's final state under DDP in ``mode``, computed in one process."""
    from matrix_setup import Features, make_net, make_optimizer, micro_batches

    from friendly_sam import frozen_bn_stats

    features = Features()
    nets = [make_net(features) for _ in range(WORLD)]
    opts = [make_optimizer(net.parameters(), features) for net in nets]
    ce = nn.functional.cross_entropy
    for batch in micro_batches():
        for r, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad(set_to_none=True)
            if mode == "synchronized":  # every replica's clean gradient is the average of both halves
                for q in range(WORLD):
                    with frozen_bn_stats(net) if q != r else contextlib.nullcontext():
                        (ce(net(shard(batch, q)[0]), shard(batch, q)[1]) / WORLD).backward()
            else:
                ce(net(shard(batch, r)[0]), shard(batch, r)[1]).backward()
            opt.first_step()
        perturbed = []
        for r, net in enumerate(nets):
            with frozen_bn_stats(net):
                ce(net(shard(batch, r)[0]), shard(batch, r)[1]).backward()
            perturbed.append([p.grad.clone() for p in net.parameters()])
        for net, opt in zip(nets, opts):
            for p, *grads in zip(net.parameters(), *perturbed):
                p.grad = sum(grads) / WORLD
            opt.second_step()
    return nets[0].state_dict()


# ----------------------------------------------------------------------------- the worker side
def _train_accelerate(rank: int) -> nn.Module:
    """Multi-process accelerate (MULTI_CPU on the process group already set up), the docs' loop."""
    import accelerate
    from matrix_setup import Features, make_net, make_optimizer, micro_batches

    from friendly_sam.integrations.accelerate import AcceleratedSAM

    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1")
    accelerator = accelerate.Accelerator(cpu=True)
    assert accelerator.num_processes == WORLD, accelerator.state
    net = make_net(Features())
    model, optimizer = accelerator.prepare(net, make_optimizer(net.parameters(), Features()))

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    sam = AcceleratedSAM(accelerator, model, optimizer, loss_fn)
    for batch in micro_batches():
        with accelerator.accumulate(model):
            sam.step(shard(batch, rank))
    return net


def _train(entry: str, rank: int) -> nn.Module:
    from matrix_setup import Features, make_net, make_optimizer, micro_batches
    from torch.nn.parallel import DistributedDataParallel

    from friendly_sam import frozen_bn_stats
    from friendly_sam.train import ddp_training_step

    if entry == "AcceleratedSAM":
        return _train_accelerate(rank)
    features = Features()
    net = make_net(features)
    model = DistributedDataParallel(net)
    opt = make_optimizer(model.parameters(), features, model=model)
    ce = nn.functional.cross_entropy
    for batch in micro_batches():
        x, y = shard(batch, rank)
        if entry == "training_step":
            ddp_training_step(model, opt, x, y, mode=MODES[entry])
        elif entry == "step(closure)":

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad()
                loss = ce(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
        else:  # the hand-written loop on a DDP model: both passes all-reduce
            opt.zero_grad(set_to_none=True)
            ce(model(x), y).backward()
            opt.first_step()
            with frozen_bn_stats(model):
                ce(model(x), y).backward()
            opt.second_step()
    return net


def worker(rdzv: str, out: Path) -> None:
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=WORLD)
    states = {entry: _train(entry, rank).state_dict() for entry in MODES}
    torch.save(states, out / f"rank{rank}.pt")
    gc.collect()  # free the DDP modules while the group lives (see tests/distributed/dist_worker.py)
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


_RESULTS: list[dict[str, Any]] | None = None


def results() -> list[dict[str, Any]]:
    """Both ranks' final states per entry point (the workers run once per session)."""
    global _RESULTS
    if _RESULTS is None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            here = Path(__file__).resolve().parent
            env = {**os.environ, "WORLD_SIZE": str(WORLD), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(here)}
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, str(out / "rdzv"), str(out)],
                    env={**env, "RANK": str(r)},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for r in range(WORLD)
            ]
            logs = [p.communicate(timeout=240)[0] for p in procs]
            for r, (p, log) in enumerate(zip(procs, logs)):
                assert p.returncode == 0 and (out / f"rank{r}.pt").exists(), f"rank {r} failed:\n{log}"
            _RESULTS = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return _RESULTS


def run_ddp(entry: str) -> dict[str, torch.Tensor]:
    """Rank 0's final state; rank 1's parameters must be bit-identical to it (one base step for both)."""
    rank0, rank1 = (r[entry] for r in results())
    for key, value in rank0.items():
        if "running" not in key and "tracked" not in key:
            assert torch.equal(value, rank1[key]), f"{entry}: replicas differ in {key}"
    return rank0


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
