"""torch.compile of the optimizer (issue 19 item 4, issue 22 item 2): compiled ``first_step`` / ``second_step``
and a compiled whole train step equal eager, with every backend and ``foreach`` setting; in capturable mode a
whole two-pass step (both backward passes, both steps, with ``fullgraph=True``) equals eager for F-SAM, SAM
and ASAM over SGD and AdamW, with no graph break.

The bug class: inductor traced the per-tensor ``saved.copy_(w); w.add_(...)`` into a copy aliasing ``w``
(the saved weights came out perturbed, so ``second_step`` restored the wrong weights), and dynamo drops
attribute assignments on optimizer objects (the phase and the step counter live in a plain object now).
Compiling is slow: the default tier keeps the cases that failed before; the full matrix is ``slow``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testkit import run_python
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


# ----------------------------------------------------------------- a whole capturable step, fullgraph
# Each case runs in its own process (tests/optim/whole_step.py): after a whole step traced with
# trace_autograd_ops, torch 2.13's dynamo keeps stale sources (the old model's gradients) that break a later
# compile of a step with a backward graph break in the same process, even after torch._dynamo.reset().
WHOLE_STEP = Path(__file__).with_name("whole_step.py")
needs_traced_backward = pytest.mark.skipif(
    not hasattr(torch._dynamo.config, "trace_autograd_ops"),
    reason="this torch cannot trace loss.backward() inside a compiled region (trace_autograd_ops)",
)
WHOLE_EXTRA = [("fsam", "sgd", True, True), ("fsam", "sgd", False, False), ("sam", "adamw", True, True),
               ("asam", "adamw", False, False)]
WHOLE_CASES = [
    pytest.param("fsam", "sgd", None, True, id="fsam-sgd-foreach=None"),
    *[
        pytest.param(m, b, fe, zg, id=f"{m}-{b}-foreach={fe}{'' if zg else '-zero_grad=False'}", marks=SLOW)
        for m, b, fe, zg in [(m, b, None, True) for m in ("fsam", "sam", "asam") for b in ("sgd", "adamw")]
        + WHOLE_EXTRA
        if (m, b, fe, zg) != ("fsam", "sgd", None, True)
    ],
]


def _whole_step(*args: object) -> None:
    done = run_python(str(WHOLE_STEP), *map(str, args), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@needs_traced_backward
@pytest.mark.parametrize("method,base,foreach,zero_grad", WHOLE_CASES)
def test_a_whole_capturable_step_compiles_with_fullgraph_and_equals_eager(method, base, foreach, zero_grad) -> None:
    _whole_step("equal", method, base, foreach, zero_grad)


@needs_traced_backward
@pytest.mark.parametrize("method,base", [("fsam", "adamw"), pytest.param("asam", "sgd", marks=SLOW)])
def test_a_whole_capturable_step_has_no_graph_break(method, base) -> None:
    _whole_step("explain", method, base)


@needs_traced_backward
@SLOW
def test_a_compiled_whole_step_skips_an_overflowing_step_like_eager() -> None:
    """A batch with an inf input (the loss and both gradients inf/nan) is skipped on the device, compiled too."""
    _whole_step("overflow")
