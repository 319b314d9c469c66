"""torch.compile of the optimizer (issue 19 item 4, issue 22 item 2): compiled ``first_step`` / ``second_step``
and a compiled whole train step equal eager, with every backend and ``foreach`` setting.

The bug class: inductor traced the per-tensor ``saved.copy_(w); w.add_(...)`` into a copy aliasing ``w``
(the saved weights came out perturbed, so ``second_step`` restored the wrong weights), and dynamo drops
attribute assignments on optimizer objects (the phase and the step counter live in a plain object now).
Compiling is slow: the default tier keeps the cases that failed before; the full matrix is ``slow``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from friendly_sam import FriendlySAM

SLOW = pytest.mark.slow


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _batches(n: int = 3):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(n)]


def _train(backend: str | None, foreach: bool | None, whole: bool = False, capturable: bool = False):
    torch._dynamo.reset()
    model = _model()
    opt = FriendlySAM(model.parameters(), lr=0.1, momentum=0.9, rho=0.2, foreach=foreach, capturable=capturable)
    first, second = opt.first_step, opt.second_step
    if backend is not None and not whole:
        first = torch.compile(first, backend=backend, fullgraph=capturable)
        second = torch.compile(second, backend=backend, fullgraph=capturable)

    def step(x, y):
        nn.functional.cross_entropy(model(x), y).backward()
        first()
        nn.functional.cross_entropy(model(x), y).backward()
        second()

    if backend is not None and whole:
        step = torch.compile(step, backend=backend)
    for x, y in _batches():
        step(x, y)
    assert opt.steps_taken == 3 and not opt.is_perturbed
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


EAGER = _train(None, None)
CASES = [
    pytest.param("inductor", None, False, id="inductor-foreach=None"),
    pytest.param("inductor", None, True, id="inductor-foreach=None-whole-step"),
    *[
        pytest.param(b, fe, whole, id=f"{b}-foreach={fe}{'-whole-step' if whole else ''}", marks=SLOW)
        for b in ("eager", "aot_eager", "inductor")
        for fe in (None, True, False)
        for whole in (False, True)
        if (b, fe) != ("inductor", None) and (b == "inductor" or not whole)
    ],
]


@pytest.mark.parametrize("backend,foreach,whole", CASES)
def test_compiled_steps_equal_eager(backend, foreach, whole) -> None:
    torch.testing.assert_close(_train(backend, foreach, whole), EAGER, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "foreach", [pytest.param(None, id="foreach=None"), pytest.param(True, marks=SLOW), pytest.param(False, marks=SLOW)]
)
def test_capturable_steps_compile_with_fullgraph_and_equal_eager(foreach) -> None:
    torch.testing.assert_close(_train("inductor", foreach, capturable=True), EAGER, rtol=0, atol=1e-6)
