"""One rank of the 2-process checks (gloo, CPU). Run as ``python dist_worker.py RDZV_FILE OUT_DIR`` with
``RANK`` and ``WORLD_SIZE`` set; writes ``OUT_DIR/rank{r}.json`` with one entry per scenario.

Every scenario compares the distributed run with a single-process reference computed on every rank
from the same seeds (float64, so the tolerances are tight), and records maximum differences.
Scenarios run in one process group to pay the start-up (importing torch twice) once.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from friendly_sam import FriendlySAM
from friendly_sam.optim import frozen_bn_stats
from friendly_sam.train import ddp_training_step

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
CE = nn.functional.cross_entropy
HP = {"rho": 0.3, "sigma": 1.0, "lmbda": 0.6, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def batches(sizes: list[int], seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)) for n in sizes]


def my_part(t: torch.Tensor) -> torch.Tensor:
    return torch.tensor_split(t, WORLD)[RANK]  # the split TensorBatchLoader(shard=...) makes


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def rank_spread(t: torch.Tensor) -> float:
    """max |t_rank - t_rank0| over ranks (0.0: bit-identical on every rank)."""
    parts = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(parts, t.contiguous())
    return max(max_diff(p, parts[0]) for p in parts)


def reference_step(model: nn.Module, opt: FriendlySAM, x: torch.Tensor, y: torch.Tensor) -> None:
    CE(model(x), y).backward()
    opt.first_step()
    with frozen_bn_stats(model):
        CE(model(x), y).backward()
    opt.second_step()


# --------------------------------------------------------------------------- scenarios
def synchronized() -> dict:
    """DDP, synchronized mode == one process over the global batch (also an uneven last batch)."""
    ref = mlp()
    net = DDP(copy.deepcopy(ref))
    opt = FriendlySAM(net.parameters(), torch.optim.SGD, **HP)
    ref_opt = FriendlySAM(ref.parameters(), torch.optim.SGD, **HP)
    diffs, spreads = [], []
    for x, y in batches([16, 16, 16, 15]):
        ddp_training_step(net, opt, my_part(x), my_part(y), mode="synchronized", global_batch_size=len(y))
        reference_step(ref, ref_opt, x, y)
        diffs.append(max_diff(flat(net.module), flat(ref)))
        spreads.append(rank_spread(flat(net.module)))
    ema = torch.cat([opt.state[p]["ema"].reshape(-1) for p in net.parameters()])
    ref_ema = torch.cat([ref_opt.state[p]["ema"].reshape(-1) for p in ref.parameters()])
    return {
        "diffs": diffs,
        "spreads": spreads,
        "ema_diff": max_diff(ema, ref_ema),
        "ema_spread": rank_spread(ema),
    }


def per_replica() -> dict:
    """DDP, per-replica mode == every replica perturbing with its own half-batch gradient and its own EMA
    (simulated in one process with one model copy and one optimizer per replica), then the average of
    the replicas' perturbed gradients applied by the (identical) base optimizers."""
    net = DDP(mlp())
    opt = FriendlySAM(net.parameters(), torch.optim.SGD, **HP)
    sims = [mlp() for _ in range(WORLD)]
    sim_opts = [FriendlySAM(m.parameters(), torch.optim.SGD, **HP) for m in sims]
    diffs, spreads = [], []
    for x, y in batches([16, 16, 16, 16], seed=2):
        ddp_training_step(net, opt, my_part(x), my_part(y), mode="per-replica")
        for r, (m, o) in enumerate(zip(sims, sim_opts)):
            xr, yr = torch.tensor_split(x, WORLD)[r], torch.tensor_split(y, WORLD)[r]
            CE(m(xr), yr).backward()
            o.first_step()  # replica r's own perturbation, from its own gradient and its own EMA
            CE(m(xr), yr).backward()  # perturbed gradient of replica r
        for ps in zip(*(m.parameters() for m in sims)):
            mean = sum(p.grad for p in ps) / WORLD  # what DDP's all-reduce of the second gradient gives
            for p in ps:
                p.grad = mean.clone()
        for o in sim_opts:
            o.second_step()
        diffs.append(max_diff(flat(net.module), flat(sims[RANK])))
        spreads.append(rank_spread(flat(net.module)))
    ema = torch.cat([opt.state[p]["ema"].reshape(-1) for p in net.parameters()])
    sim_ema = torch.cat([sim_opts[RANK].state[p]["ema"].reshape(-1) for p in sims[RANK].parameters()])
    return {
        "diffs": diffs,
        "spreads": spreads,
        "ema_diff_own_replica": max_diff(ema, sim_ema),
        "ema_spread": rank_spread(ema),
        "sims_agree": max_diff(flat(sims[0]), flat(sims[-1])),
    }


def batchnorm_buffers() -> dict:
    """What DDP's buffer broadcast (from rank 0, before a synchronised forward) does to BatchNorm
    running statistics in each mode; parameters stay identical in both."""
    out = {}
    for mode in ("per-replica", "synchronized"):
        net = DDP(bn_net())
        opt = FriendlySAM(net.parameters(), torch.optim.SGD, **HP)
        for x, y in batches([16, 16, 16], seed=3):
            ddp_training_step(net, opt, my_part(x), my_part(y), mode=mode)
        bufs = torch.cat([b.reshape(-1).to(torch.float64) for b in net.module.buffers()])
        # rank 0's own chain of statistics: what it checkpoints
        out[mode] = {"param_spread": rank_spread(flat(net.module)), "buffer_spread": rank_spread(bufs)}
    return out


def backward_only_no_sync() -> dict:
    """The common recipe's mistake: forward outside no_sync(), backward inside. DDP decides in forward."""
    net = DDP(mlp())
    x, y = batches([16], seed=4)[0]
    loss = CE(net(my_part(x)), my_part(y))
    with net.no_sync():
        loss.backward()
    wrong = rank_spread(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    net.zero_grad(set_to_none=True)
    with net.no_sync():
        CE(net(my_part(x)), my_part(y)).backward()
    right = rank_spread(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    return {"grad_spread_backward_only": wrong, "grad_spread_forward_and_backward": right}


def comm_volume() -> dict:
    """Bytes all-reduced per step, counted by AllReduceCounter: per-replica = one gradient (as plain
    DDP), synchronized = two."""
    from friendly_sam.distributed import AllReduceCounter

    out = {}
    for mode in ("per-replica", "synchronized"):
        net = DDP(mlp())
        counter = AllReduceCounter(net)
        opt = FriendlySAM(net.parameters(), torch.optim.SGD, **HP)
        for x, y in batches([16, 16], seed=7):
            ddp_training_step(net, opt, my_part(x), my_part(y), mode=mode)
        out[mode] = counter.bytes / 2
    out["gradient_bytes"] = sum(p.numel() * p.element_size() for p in mlp().parameters())
    return out


def _shards(model: nn.Module) -> list[tuple[torch.Tensor, int, int]]:
    """This rank's contiguous slice of each flattened parameter, as a leaf tensor: weights are split
    unevenly (FSDP-style), each bias belongs to one rank whole (ZeRO-1-style), so the other ranks hold
    an empty shard of it."""
    out = []
    for i, p in enumerate(model.parameters()):
        n = p.numel()
        if p.dim() == 1:
            owner = i % WORLD
            lo, hi = (0, n) if RANK == owner else (0, 0)
        else:
            edges = [round(n * (k / WORLD) ** 2) for k in range(WORLD + 1)]  # uneven: 1/4 and 3/4
            lo, hi = edges[RANK], edges[RANK + 1]
        out.append((p.detach().reshape(-1)[lo:hi].clone().requires_grad_(True), lo, hi))
    return out


def gather_into_model(work: nn.Module, shards: list[tuple[torch.Tensor, int, int]]) -> None:
    """Full weights from every rank's shards (for a forward pass)."""
    with torch.no_grad():
        for (s, _, _), p in zip(shards, work.parameters()):
            parts: list = [None] * WORLD
            dist.all_gather_object(parts, s.detach())
            p.copy_(torch.cat(parts).reshape(p.shape))


def local_grads(
    work: nn.Module, shards: list[tuple[torch.Tensor, int, int]], x: torch.Tensor, y: torch.Tensor
):
    """Gradient of this rank's half-batch, averaged over ranks and sliced (= reduce-scatter)."""
    work.zero_grad(set_to_none=True)
    CE(work(my_part(x)), my_part(y)).backward()
    for (s, lo, hi), p in zip(shards, work.parameters()):
        g = p.grad.detach().reshape(-1).clone()
        dist.all_reduce(g)
        s.grad = (g / WORLD)[lo:hi].clone()


def sharded_simulation() -> dict:
    """ZeRO-style: each rank holds only a slice of every parameter (optimizer state too). Gradients are
    averaged then sliced (= reduce-scatter); the full weights are gathered for each forward."""
    out = {}
    for name, kw in {
        "fsam": {},
        "fsam_clip": {"max_grad_norm": 0.05},
        "afsam": {"adaptive": True, "rho": 1.0},
    }.items():
        for use_group in (True, False):
            ref = mlp()
            work = mlp()
            shards = _shards(work)
            group = {"process_group": dist.group.WORLD} if use_group else {}
            opt = FriendlySAM([s for s, _, _ in shards], torch.optim.SGD, **{**HP, **kw, **group})
            ref_opt = FriendlySAM(ref.parameters(), torch.optim.SGD, **{**HP, **kw})

            diffs = []
            for x, y in batches([16, 16, 16], seed=5):
                gather_into_model(work, shards)
                local_grads(work, shards, x, y)
                opt.first_step()
                gather_into_model(work, shards)  # the perturbed weights
                local_grads(work, shards, x, y)
                opt.second_step()
                reference_step(ref, ref_opt, x, y)
                gather_into_model(work, shards)
                diffs.append(max_diff(flat(work), flat(ref)))
            out[f"{name}_{'group' if use_group else 'nogroup'}"] = diffs
    out["empty_shard_on_rank"] = [RANK for s, _, _ in _shards(mlp()) if s.numel() == 0]
    return out


def fsdp2() -> dict:
    """FSDP2 fully_shard on CPU/gloo: F-SAM (DTensor parameters) vs one process over the global batch;
    also with the multi-tensor (foreach) kernels that accelerators use by default."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))  # CPU also where a GPU is visible
    out = {}
    for name, extra in {
        "group": {"process_group": dist.group.WORLD},
        "dtensor_default": {},
        "group_foreach": {"process_group": dist.group.WORLD, "foreach": True},
    }.items():
        ref = mlp()
        model = mlp()
        fully_shard(model[0], mesh=mesh)
        fully_shard(model[2], mesh=mesh)
        fully_shard(model, mesh=mesh)
        kw = {**HP, "max_grad_norm": 0.05}
        opt = FriendlySAM(model.parameters(), torch.optim.SGD, **kw, **extra)
        ref_opt = FriendlySAM(ref.parameters(), torch.optim.SGD, **kw)
        diffs = []
        for x, y in batches([16, 16, 16], seed=6):
            reference_step(model, opt, my_part(x), my_part(y))
            reference_step(ref, ref_opt, x, y)
            full = torch.cat([p.full_tensor().detach().reshape(-1) for p in model.parameters()])
            diffs.append(max_diff(full, flat(ref)))
        out[name] = diffs
    return out


def fp16_overflow_per_replica() -> dict:
    """Per-replica DDP with a GradScaler (fp32 weights; the scaler on CPU): rank 1's clean gradient
    overflows at step 2 only. Without ``replica_group`` rank 1 alone skips that step; with it both do."""
    out: dict = {}
    for agree in (False, True):
        net = DDP(mlp().float())
        group = dist.group.WORLD if agree else None
        opt = FriendlySAM(net.parameters(), torch.optim.SGD, replica_group=group, **HP)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        param_spreads, scale_spreads, moved, ema_moved = [], [], [], []
        for step, (x, y) in enumerate(batches([16, 16, 16, 16], seed=3)):
            x, y = my_part(x).float(), my_part(y)
            before = flat(net.module).clone()
            ema_before = [opt.state[p]["ema"].clone() for p in net.parameters() if "ema" in opt.state[p]]
            with net.no_sync():
                loss = CE(net(x), y)
                if step == 2 and RANK == 1:
                    loss = loss * float("inf")  # this replica's clean gradient overflows
                scaler.scale(loss).backward()
            opt.first_step(scaler=scaler)
            scaler.scale(CE(net(x), y)).backward()  # perturbed pass: DDP all-reduces the gradient
            opt.second_step(scaler=scaler)
            scaler.update()
            param_spreads.append(rank_spread(flat(net.module)))
            scale_spreads.append(rank_spread(torch.tensor([scaler.get_scale()])))
            moved.append(max_diff(flat(net.module), before))
            ema_after = [opt.state[p]["ema"] for p in net.parameters()]
            ema_moved.append(max((max_diff(a, b) for a, b in zip(ema_after, ema_before)), default=-1.0))
        out["agree" if agree else "alone"] = {
            "param_spreads": param_spreads,
            "scale_spreads": scale_spreads,
            "moved": moved,
            "ema_moved": ema_moved,
            "final_scale": scaler.get_scale(),
        }
    return out


def periodic() -> dict:
    """perturb_every=2 with sub-batch ascent under DDP: the unperturbed steps' clean gradient is the applied
    one, so it must be all-reduced (in per-replica mode too); the replicas stay identical only then. LookSAM
    in synchronized mode (its component comes from all-reduced gradients); refused in per-replica mode."""
    out: dict = {}
    for mode, between in (("per-replica", "base"), ("synchronized", "looksam"), ("per-replica", "looksam")):
        net = DDP(mlp())
        opt = FriendlySAM(net.parameters(), torch.optim.SGD, perturb_every=2, between=between, **HP)
        spreads, kinds = [], []
        try:
            for x, y in batches([16, 16, 16, 16], seed=3):
                kinds.append(opt.next_step_perturbs)
                ddp_training_step(net, opt, my_part(x), my_part(y), mode=mode, ascent_fraction=0.5)
                spreads.append(rank_spread(flat(net.module)))
        except ValueError as error:
            out[f"{mode}/{between}"] = {"refused": str(error)}
            continue
        out[f"{mode}/{between}"] = {"spreads": spreads, "kinds": kinds, "steps": opt.steps_taken}
    return out


SCENARIOS: dict[str, Callable[[], dict]] = {
    "periodic": periodic,
    "synchronized": synchronized,
    "per_replica": per_replica,
    "batchnorm_buffers": batchnorm_buffers,
    "backward_only_no_sync": backward_only_no_sync,
    "comm_volume": comm_volume,
    "sharded_simulation": sharded_simulation,
    "fsdp2": fsdp2,
    "fp16_overflow_per_replica": fp16_overflow_per_replica,
}


def main() -> None:
    rdzv, out_dir = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=RANK, world_size=WORLD)
    results = {}
    for name, fn in SCENARIOS.items():
        try:
            results[name] = fn()
        except Exception:  # reported per scenario; the collectives of the others still line up
            results[name] = {"error": traceback.format_exc()}
        dist.barrier()
    (out_dir / f"rank{RANK}.json").write_text(json.dumps(results, indent=1))
    # The scenarios' DDP modules sit in reference cycles; freed only at interpreter exit, after
    # destroy_process_group, torch/gloo aborts in ~20 % of runs ("terminate called without an active
    # exception", exit 134). Free them while the group is alive, then skip interpreter teardown entirely.
    # Failures still show: a crash before os._exit exits non-zero; the tests check every scenario's "error".
    gc.collect()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
