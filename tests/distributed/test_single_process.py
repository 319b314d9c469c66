"""The distributed helpers' single-process behaviour and their checks (no process group needed)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from friendly_sam import SAM, FriendlySAM
from friendly_sam.distributed import (
    DistributedContext,
    init_from_env,
    load_replica_state,
    replica_state,
)
from friendly_sam.distributed.runtime import process_group_failure
from friendly_sam.train.step import ddp_training_step, training_step

torch.set_num_threads(1)


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def stepped(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    training_step(model, opt, torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen))


def test_ddp_training_step_without_ddp_is_the_plain_step():
    a, b = tiny(), tiny()
    oa, ob = (FriendlySAM(m.parameters(), torch.optim.SGD, lr=0.1, rho=0.1) for m in (a, b))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for mode in ("per-replica", "synchronized"):
        la, _ = training_step(a, oa, x, y)
        lb, _ = ddp_training_step(b, ob, x, y, mode=mode, global_batch_size=8)
        assert torch.equal(la, lb)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="per-replica"):
        ddp_training_step(b, ob, x, y, mode="local")


def test_replica_state_round_trip_and_world_size_change():
    models = [tiny() for _ in range(3)]
    opts = [FriendlySAM(m.parameters(), torch.optim.SGD, lr=0.1, rho=0.1) for m in models]
    for r, (m, o) in enumerate(zip(models, opts)):
        stepped(m, o, seed=r)  # different data: different EMAs
    saved = [replica_state(o) for o in opts[:2]]  # a "2-rank" checkpoint
    assert set(saved[0]) == {0, 1, 2, 3} and set(saved[0][0]) == {"ema"}
    target = copy.deepcopy(opts[2])
    for rank, source in [(0, 0), (1, 1), (2, 0), (3, 1)]:  # rank r takes saved state r % 2
        load_replica_state(target, saved, rank)
        params = [p for g in target.param_groups for p in g["params"]]
        assert all(torch.equal(target.state[p]["ema"], saved[source][i]["ema"]) for i, p in enumerate(params))
    load_replica_state(target, [], 0)  # nothing saved (synchronized mode, SAM): unchanged
    sam = SAM(tiny().parameters(), torch.optim.SGD, lr=0.1)
    assert replica_state(sam) == {} and replica_state(torch.optim.SGD(tiny().parameters(), lr=0.1)) == {}


def test_single_process_context_never_communicates(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_from_env("cpu")
    assert not ctx.enabled and ctx.is_main and ctx.device == torch.device("cpu")
    model = tiny()
    assert ctx.wrap(model, sync_bn=True) is model
    assert ctx.all_sum([1.5, 2]) == [1.5, 2]
    assert ctx.evaluate(lambda m, x, y: (0.5, 75.0), model, torch.zeros(4, 4), torch.zeros(4)) == (0.5, 75.0)
    assert ctx.main_first(lambda: 7) == 7
    ctx.check_batches(5, 4)
    ctx.close()


def test_distributed_checks_name_the_fix():
    ctx = DistributedContext(torch.device("cpu"), rank=0, world_size=2)
    with pytest.raises(ValueError, match="--batch-size 4 over 9 training images leaves a batch of 1"):
        ctx.check_batches(9, 4)
    ctx.check_batches(10, 4)  # last batch of 2: one image per process
    with pytest.raises(ValueError, match="--sync-bn: torch's SyncBatchNorm runs on CUDA"):
        ctx.wrap(tiny(), sync_bn=True)


def test_process_group_must_be_a_process_group():
    with pytest.raises(TypeError, match="process_group must be a torch.distributed ProcessGroup"):
        FriendlySAM(tiny().parameters(), torch.optim.SGD, lr=0.1, process_group="world")
    assert FriendlySAM(tiny().parameters(), torch.optim.SGD, lr=0.1).process_group is None


def test_replica_group_must_be_a_process_group():
    with pytest.raises(TypeError, match="replica_group must be a torch.distributed ProcessGroup"):
        SAM(tiny().parameters(), torch.optim.SGD, lr=0.1, replica_group=0)
    assert FriendlySAM(tiny().parameters(), torch.optim.SGD, lr=0.1).replica_group is None


# ------------------------------------------------------------------ which errors are a failed process group
# (where the error is raised, its message, whether the CLI reports it as one line about the process group)
RAISED = [
    ("torch/nn/parallel/distributed.py", "Application timeout caused pair closure", "stopped responding"),
    ("torch/distributed/distributed_c10d.py", "Connection closed by peer [127.0.0.1]:1234", "ended or failed"),
    ("torch/autograd/graph.py", "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Timed out", "stopped"),
    ("my_project/model.py", "mat1 and mat2 shapes cannot be multiplied (8x4 and 5x3)", None),
    ("torch/nn/modules/linear.py", "mat1 and mat2 shapes cannot be multiplied (8x4 and 5x3)", None),
]


def _raised_at(filename: str, message: str) -> RuntimeError:
    try:
        exec(compile(f"raise RuntimeError({message!r})", f"/site-packages/{filename}", "exec"))
    except RuntimeError as exc:
        return exc
    raise AssertionError("not raised")


@pytest.mark.parametrize("filename,message,why", RAISED, ids=[r[0] for r in RAISED])
def test_a_failed_collective_is_told_apart_from_a_model_error(filename, message, why) -> None:
    found = process_group_failure(_raised_at(filename, message))
    assert (found is None) == (why is None)
    if why is not None:
        assert why in str(found) and "fsam train --resume RUN_DIR" in str(found)


def test_a_model_error_inside_ddps_forward_stays_a_model_error() -> None:
    """DDP's forward calls the model: the raising frame is the model's, not DDP's."""
    def ddp_forward():
        exec(compile("model_forward()", "/site-packages/torch/nn/parallel/distributed.py", "exec"),
             {"model_forward": lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch"))})  # fmt: skip

    with pytest.raises(RuntimeError) as info:
        ddp_forward()
    assert process_group_failure(info.value) is None
