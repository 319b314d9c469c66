"""capturable=True: no host synchronisation per step, decisions on the device (issue 22 items 1-2).

Zero syncs is proven with testkit's SyncCounter (a TorchDispatchMode counting what ``.item()``, ``float()``
and ``bool()`` of a tensor dispatch to); the golden trajectories hold in capturable mode; an
overflowing step is skipped on the device and counted; compiled steps have no graph break."""

from __future__ import annotations

import pytest
import torch
from test_golden import BASES, CLASSES, PROBLEM, TRACE, _loss
from testkit import SyncCounter
from torch import nn

from friendly_sam import SAM, FriendlySAM

METHODS = {
    "fsam": (FriendlySAM, {"rho": 0.2, "lmbda": 0.6}),
    "sam": (SAM, {"rho": 0.05}),
    "asam": (SAM, {"rho": 0.5, "adaptive": True}),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _batches(n: int = 4):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(n)]


def _run(method: str, capturable: bool, foreach: bool | None, scaler: bool, poison: int | None = None):
    """A hand loop; returns (parameters, syncs per step, optimizer, scaler)."""
    cls, kw = METHODS[method]
    model = _model()
    opt = cls(model.parameters(), lr=0.1, momentum=0.9, foreach=foreach, capturable=capturable, **kw)
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if scaler else None
    scale = grad_scaler.scale if grad_scaler else (lambda v: v)
    step_kw = {"scaler": grad_scaler} if grad_scaler else {}
    syncs = []
    for t, (x, y) in enumerate(_batches()):
        scale(nn.functional.cross_entropy(model(x), y)).backward()
        if t == poison:
            model[0].weight.grad[0, 0] = float("inf")
        with SyncCounter() as counter:
            opt.first_step(**step_kw)
        scale(nn.functional.cross_entropy(model(x), y)).backward()
        with counter:
            opt.second_step(**step_kw)
            if grad_scaler:
                grad_scaler.update()
        syncs.append(counter.count)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), syncs, opt, grad_scaler


@pytest.mark.parametrize("scaler", [False, True], ids=["fp32", "grad-scaler"])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_a_capturable_step_never_synchronises_and_equals_the_default_mode(method, foreach, scaler) -> None:
    want, default_syncs, _, _ = _run(method, False, foreach, scaler)
    got, syncs, opt, _ = _run(method, True, foreach, scaler)
    assert syncs == [0, 0, 0, 0]
    assert min(default_syncs) >= 1  # the counter sees the default mode's syncs
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert int(opt.skipped_steps) == 0


@pytest.mark.parametrize("scaler", [False, True], ids=["fp32", "grad-scaler"])
def test_an_overflowing_step_is_skipped_on_the_device_and_counted(scaler) -> None:
    ref_model = _model()
    _, syncs, opt, grad_scaler = _run("fsam", True, None, scaler, poison=2)
    assert syncs == [0, 0, 0, 0] and int(opt.skipped_steps) == 1
    if grad_scaler is not None:
        assert grad_scaler.get_scale() == 2.0**7  # the overflow reached scaler.update()
    # the skipped step changed nothing: a run of the same loop without that step's batch ends the same
    model, opt2 = ref_model, FriendlySAM(ref_model.parameters(), lr=0.1, momentum=0.9, rho=0.2, lmbda=0.6)
    for t, (x, y) in enumerate(_batches()):
        if t == 2:
            continue
        nn.functional.cross_entropy(model(x), y).backward()
        opt2.first_step()
        nn.functional.cross_entropy(model(x), y).backward()
        opt2.second_step()
    got, *_ = _run("fsam", True, None, scaler, poison=2)
    torch.testing.assert_close(got, torch.cat([p.detach().reshape(-1) for p in model.parameters()]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", TRACE["cases"], ids=[c["name"] for c in TRACE["cases"]])
def test_golden_trajectories_hold_in_capturable_mode(case: dict) -> None:
    x, y = torch.tensor(PROBLEM["X"], dtype=torch.float64), torch.tensor(PROBLEM["y"])
    names = PROBLEM["param_order"]
    params = {n: torch.tensor(PROBLEM["init"][n], dtype=torch.float64, requires_grad=True) for n in names}
    opt = CLASSES[case["cls"]](
        [params[n] for n in names], BASES[case["base"]], capturable=True, **case["opt"], **case["base_kw"]
    )
    for t, expected in enumerate(case["trajectory"]):
        rows = slice((4 * t) % 16, (4 * t) % 16 + 4)
        _loss(params, x[rows], y[rows]).backward()
        opt.first_step()
        _loss(params, x[rows], y[rows]).backward()
        opt.second_step()
        for n in names:
            err = (params[n].detach() - torch.tensor(expected[n], dtype=torch.float64)).abs().max().item()
            assert err < 1e-10, f"step {t}, {n}: max abs error {err:.3g}"


def test_options_decided_on_the_host_are_refused_with_capturable() -> None:
    params = list(_model().parameters())
    with pytest.raises(ValueError, match="perturb_every"):
        FriendlySAM(params, lr=0.1, capturable=True, perturb_every=2)
    with pytest.raises(ValueError, match="track_diagnostics"):
        FriendlySAM(params, lr=0.1, capturable=True, track_diagnostics=True)
    with pytest.raises(ValueError, match="component='full'"):
        FriendlySAM(params, lr=0.1, capturable=True, component="full")
    with pytest.raises(ValueError, match="set_full_gradient"):
        FriendlySAM(params, lr=0.1, capturable=True).set_full_gradient([None] * len(params))


@pytest.mark.parametrize("foreach", [None, True, False])
def test_capturable_steps_compile_without_graph_breaks(foreach) -> None:
    model = _model()
    opt = FriendlySAM(model.parameters(), lr=0.1, momentum=0.9, foreach=foreach, capturable=True)
    (x, y), *_ = _batches(1)
    nn.functional.cross_entropy(model(x), y).backward()
    first = torch._dynamo.explain(opt.first_step)()
    nn.functional.cross_entropy(model(x), y).backward()
    second = torch._dynamo.explain(opt.second_step)()
    assert (first.graph_break_count, second.graph_break_count) == (0, 0), (first.break_reasons, second.break_reasons)
    assert first.graph_count == 1 and second.graph_count == 1


@pytest.mark.parametrize(
    "base,kw",
    [
        (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
        (torch.optim.SGD, {"momentum": 0.9, "dampening": 0.5}),
        (torch.optim.Adam, {"amsgrad": True}),
        (torch.optim.AdamW, {"weight_decay": 0.1}),
    ],
    ids=["sgd-nesterov", "sgd-dampening", "adam-amsgrad", "adamw"],
)
def test_the_base_state_made_for_a_compiled_step_equals_torchs_own(base, kw) -> None:
    """capturable=True creates the base optimizer's state at construction (a compiled whole step cannot let
    torch create it): after steps it must be torch's state, key by key, dtype, device and value; SGD with
    dampening has no exact zero state and is left to torch."""
    states = []
    for capturable in (False, True):
        model = _model()
        opt = FriendlySAM(model.parameters(), base, lr=0.05, rho=0.2, capturable=capturable, **kw)
        if capturable:
            assert bool(opt.base_optimizer.state) == ("dampening" not in kw)
        for x, y in _batches(2):
            nn.functional.cross_entropy(model(x), y).backward()
            opt.first_step()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.second_step()
        states.append([opt.base_optimizer.state[p] for p in model.parameters()])
    for want, got in zip(*states):
        assert want.keys() == got.keys()
        for key in want:
            assert (want[key].dtype, want[key].device) == (got[key].dtype, got[key].device), key
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "base,kw",
    [(torch.optim.SGD, {"momentum": 0.9, "dampening": 0.5}), (torch.optim.RMSprop, {}), (torch.optim.Adam, {})],
    ids=["sgd-dampening", "rmsprop", "adam"],
)
def test_a_skipped_first_step_leaves_no_inf_or_nan_in_the_base_state(base, kw) -> None:
    """The state a base optimizer creates at the step it sees must not keep the skipped step's inf/nan."""
    model = _model()
    opt = SAM(model.parameters(), base, lr=0.01, rho=0.05, capturable=True, **kw)
    for t, (x, y) in enumerate(_batches(3)):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.first_step()
        nn.functional.cross_entropy(model(x), y).backward()
        if t == 0:
            model[0].weight.grad[0, 0] = float("nan")
        opt.second_step()
    assert int(opt.skipped_steps) == 1
    state = [t for p in model.parameters() for t in opt.base_optimizer.state[p].values() if torch.is_tensor(t)]
    assert state and all(torch.isfinite(t).all() for t in state)
    assert all(torch.isfinite(p).all() for p in model.parameters())
