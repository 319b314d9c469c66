"""A whole capturable two-pass step compiled as ONE ``fullgraph=True`` graph (both backward passes, both steps),
checked against eager in a process of its own (tests/optim/test_compile.py runs it; why a process: there).

    python tests/optim/whole_step.py equal METHOD BASE FOREACH ZERO_GRAD [DEVICE]   # compiled == eager
    python tests/optim/whole_step.py explain METHOD BASE                   # 0 graph breaks, 1 graph
    python tests/optim/whole_step.py overflow                              # an inf batch skipped alike

Exits 0 when the check holds (an AssertionError otherwise).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from friendly_sam import SAM, FriendlySAM

METHODS = {
    "fsam": (FriendlySAM, {"rho": 0.2, "lmbda": 0.6}),
    "sam": (SAM, {"rho": 0.05}),
    "asam": (SAM, {"rho": 0.5, "adaptive": True}),
}
BASES = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}),
    "adamw": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
}


DEVICE = ["cpu"]  # the last argument of ``equal`` may change it (tests/gpu: "cuda")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(DEVICE[0])


def _batches(n: int):
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(n)]
    return [(x.to(DEVICE[0]), y.to(DEVICE[0])) for x, y in batches]


def _run(opt_of, batches, zero_grad: bool, compiled: bool):
    """The recipe of docs/gpu.md over ``batches``; returns the weights, the optimizer and the step."""
    torch._dynamo.reset()
    model = _model()
    opt = opt_of(model)

    def step(x, y):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=zero_grad)
        if not zero_grad:
            opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=zero_grad)
        if not zero_grad:
            opt.zero_grad()

    run = torch.compile(step, fullgraph=True) if compiled else step
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        for x, y in batches:
            run(x, y)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), opt, step


def _opt_of(method: str, base: str, foreach: bool | None):
    (cls, kw), (base_cls, base_kw) = METHODS[method], BASES[base]
    return lambda model: cls(model.parameters(), base_cls, capturable=True, foreach=foreach, **kw, **base_kw)


def equal(method: str, base: str, foreach: str, zero_grad: str, device: str = "cpu") -> None:
    DEVICE[0] = device
    opt_of = _opt_of(method, base, None if foreach == "None" else foreach == "True")
    want, _, _ = _run(opt_of, _batches(3), zero_grad == "True", compiled=False)
    got, opt, _ = _run(opt_of, _batches(3), zero_grad == "True", compiled=True)
    assert opt.steps_taken == 3 and int(opt.skipped_steps) == 0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def explain(method: str, base: str) -> None:
    _, _, step = _run(_opt_of(method, base, None), _batches(3), True, compiled=False)
    (x, y), *_ = _batches(1)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        report = torch._dynamo.explain(step)(x, y)
    assert report.graph_break_count == 0 and report.graph_count == 1, report.break_reasons


def overflow() -> None:
    batches = _batches(4)
    batches[2][0][0, 0] = float("inf")  # the loss and both gradients inf/nan: skipped on the device
    results = []
    for compiled in (False, True):
        weights, opt, _ = _run(_opt_of("fsam", "sgd", None), batches, True, compiled)
        assert int(opt.skipped_steps) == 1
        results.append(weights)
    assert torch.isfinite(results[1]).all()
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-6)


if __name__ == "__main__":
    {"equal": equal, "explain": explain, "overflow": overflow}[sys.argv[1]](*sys.argv[2:])
