"""A whole two-pass training step captured in a CUDA graph and replayed (capturable=True; needs a GPU).

Written to torch's recipe for whole-network capture: warm-up steps on a side stream (they create the
optimizer state: F-SAM's EMA, SGD's momentum, AdamW's moments), gradients set to None before capture, static
input tensors refilled before each replay. The replayed run must equal the same steps taken eagerly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testkit import run_python
from torch import nn

from friendly_sam import SAM, FriendlySAM

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)"
)

WARMUP, REPLAYS = 3, 5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)).cuda()


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 16, generator=gen).cuda(), torch.randint(0, 4, (8,), generator=gen).cuda())
        for _ in range(WARMUP + REPLAYS)
    ]


def _step(model, opt, x, y) -> None:
    nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.second_step()


def _captured(model, opt, static_x, static_y, warmup) -> torch.cuda.CUDAGraph:
    """torch's whole-network recipe: warm-up steps on a side stream (they create the optimizer state), the
    gradients set to None, then one step captured (replay it after refilling ``static_x``, ``static_y``)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in warmup:
            static_x.copy_(x)
            static_y.copy_(y)
            _step(model, opt, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _step(model, opt, static_x, static_y)
    return graph


OPTIMIZERS = {
    "fsam-sgd": lambda ps: FriendlySAM(ps, torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.2, capturable=True),
    "asam-sgd": lambda ps: SAM(
        ps, torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.5, adaptive=True, capturable=True
    ),
    "fsam-adamw": lambda ps: FriendlySAM(ps, torch.optim.AdamW, lr=1e-3, rho=0.2, capturable=True),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_captured_two_pass_step_replays_like_eager(name) -> None:
    batches = _batches()
    eager_model = _model()
    eager_opt = OPTIMIZERS[name](eager_model.parameters())
    for x, y in batches:
        _step(eager_model, eager_opt, x, y)

    model = _model()
    opt = OPTIMIZERS[name](model.parameters())
    static_x, static_y = batches[0][0].clone(), batches[0][1].clone()
    graph = _captured(model, opt, static_x, static_y, batches[:WARMUP])
    for x, y in batches[WARMUP:]:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert int(opt.skipped_steps) == 0


def test_an_overflow_inside_a_replayed_graph_is_skipped_and_counted() -> None:
    model = _model()
    opt = OPTIMIZERS["fsam-sgd"](model.parameters())
    (x, y), *_ = _batches()
    static_x, static_y = x.clone(), y.clone()
    graph = _captured(model, opt, static_x, static_y, [(x, y)] * WARMUP)
    before = [p.detach().clone() for p in model.parameters()]
    static_x.fill_(float("nan"))  # a diverged batch: both gradients are nan
    graph.replay()
    torch.cuda.synchronize()
    assert int(opt.skipped_steps) == 1
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_a_whole_step_compiled_as_one_graph_equals_eager_on_cuda(base) -> None:
    """The recipe of docs/gpu.md on CUDA (AdamW there with capturable=True: torch's functional adam on device
    steps), in a process of its own as on the CPU (tests/optim/test_compile.py says why)."""
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("this torch cannot trace loss.backward() inside a compiled region")
    script = Path(__file__).parents[1] / "optim" / "whole_step.py"
    done = run_python(str(script), "equal", "fsam", base, "None", "True", "cuda", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
