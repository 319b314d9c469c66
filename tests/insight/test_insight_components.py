"""FriendlySAM's perturbation components, oracle full gradient and diagnostics on constructed gradients."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from friendly_sam import FriendlySAM

F64 = torch.float64
# A constructed gradient sequence for one 3-vector parameter (lr = 0: the weights never move, so the
# perturbation of each step is exactly w_perturbed - w).
GRADS = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0], [3.0, -1.0, 2.0]]


def reference(component: str, sigma: float, lmbda: float, oracle=None) -> tuple[list, list]:
    """Expected unit directions and EMAs, written out from the definitions (official order)."""
    m = None
    dirs, emas = [], []
    for g in GRADS:
        g = torch.tensor(g, dtype=F64)
        est = torch.tensor(oracle, dtype=F64) if oracle is not None else m
        if est is None:
            d = g
        elif component == "noise":
            d = g - sigma * est
        elif component == "full":
            d = est
        else:
            d = g
        m = g.clone() if m is None else lmbda * m + (1 - lmbda) * g
        n = float(d.norm())
        dirs.append(d / n if n > 0 else torch.zeros(3, dtype=F64))
        emas.append(m.clone())
    return dirs, emas


def perturbations(opt, w, rho=1.0, oracle=None):
    out, emas = [], []
    for g in GRADS:
        if oracle is not None:
            opt.set_full_gradient([torch.tensor(oracle, dtype=F64)])
        before = w.detach().clone()
        w.grad = torch.tensor(g, dtype=F64)
        opt.first_step()
        out.append((w.detach() - before) / rho)
        emas.append(opt.state[w]["ema"].clone())
        w.grad = torch.zeros(3, dtype=F64)
        opt.second_step()
    return out, emas


def make(component="noise", sigma=1.0, lmbda=0.5, **kw):
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=F64))
    opt = FriendlySAM(
        [w], torch.optim.SGD, rho=1.0, sigma=sigma, lmbda=lmbda, component=component, lr=0.0, **kw
    )
    return w, opt


@pytest.mark.parametrize("component", ["noise", "full", "minibatch"])
@pytest.mark.parametrize("sigma", [1.0, 0.5])
@pytest.mark.parametrize("diagnostics", [False, True])
def test_component_directions_and_ema(component, sigma, diagnostics):
    w, opt = make(component, sigma, track_diagnostics=diagnostics)
    got, emas = perturbations(opt, w)
    want, want_emas = reference(component, sigma, 0.5)
    for t, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=f"step {t}")
    for a, b in zip(emas, want_emas):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_explicit_directions_of_the_second_step():
    # step 2 has g = (0, 2, 0), m = (1, 0, 0): the three modes perturb along three different axes
    expected = {"noise": [-1.0, 2.0, 0.0], "full": [1.0, 0.0, 0.0], "minibatch": [0.0, 1.0, 0.0]}
    for component, d in expected.items():
        w, opt = make(component)
        got, _ = perturbations(opt, w)
        d = torch.tensor(d, dtype=F64)
        torch.testing.assert_close(got[1], d / d.norm(), atol=1e-10, rtol=0)


def test_default_noise_component_is_unchanged_bitwise_with_diagnostics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    data = [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(5)]
    results = []
    for kw in ({}, {"component": "noise"}, {"track_diagnostics": True}):
        m = copy.deepcopy(model)
        opt = FriendlySAM(m.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, **kw)
        for x, y in data:
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.first_step()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.second_step()
        results.append([p.detach().clone() for p in m.parameters()])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("component", ["noise", "full", "minibatch"])
def test_oracle_replaces_the_ema(component):
    oracle = [0.5, 0.5, -1.0]
    w, opt = make(component, track_diagnostics=True)
    got, emas = perturbations(opt, w, oracle=oracle)
    want, want_emas = reference(component, 1.0, 0.5, oracle=oracle)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    for a, b in zip(emas, want_emas):  # the EMA is still tracked from g, untouched by the oracle
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    opt.clear_full_gradient()
    assert "full_grad" not in opt.state[w]


@pytest.mark.parametrize("adaptive", [False, True])
def test_oracle_equal_to_the_gradient_gives_no_perturbation_and_no_nan(adaptive):
    w, opt = make("noise", adaptive=adaptive, track_diagnostics=True)
    for g in GRADS:  # one-batch data set: the full gradient IS the minibatch gradient
        opt.set_full_gradient([torch.tensor(g, dtype=F64)])
        before = w.detach().clone()
        w.grad = torch.tensor(g, dtype=F64)
        opt.first_step()
        assert torch.equal(w.detach(), before)  # e = rho * 0 / (0 + 1e-12) = 0 exactly
        assert torch.isfinite(opt.state[w]["ema"]).all()
        w.grad = torch.tensor(g, dtype=F64)
        opt.second_step()
    diag = opt.read_diagnostics()
    assert diag == {"steps": 4, "cos_g_m": pytest.approx(1.0, abs=1e-12), "noise_ratio": 0.0}


def test_diagnostics_values_on_a_constructed_case():
    w, opt = make("noise", lmbda=0.5, track_diagnostics=True)
    perturbations(opt, w)
    # steps 2..4 have an EMA: m2 = (1,0,0), m3 = (.5,1,0), m4 = (.75,1,.5)
    ms = [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.75, 1.0, 0.5]]
    cos, ratio = [], []
    for g, m in zip(GRADS[1:], ms):
        g, m = torch.tensor(g, dtype=F64), torch.tensor(m, dtype=F64)
        cos.append(float(g @ m / (g.norm() * m.norm())))
        ratio.append(float((g - m).norm() / m.norm()))
    diag = opt.read_diagnostics()
    assert diag["steps"] == 3
    assert diag["cos_g_m"] == pytest.approx(sum(cos) / 3, abs=1e-12)
    assert diag["noise_ratio"] == pytest.approx(sum(ratio) / 3, abs=1e-12)
    assert opt.read_diagnostics() == {"steps": 0, "cos_g_m": None, "noise_ratio": None}  # reset


def test_sigma_scales_the_noise_ratio():
    w, opt = make("noise", sigma=0.5, lmbda=0.5, track_diagnostics=True)
    w.grad = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    opt.first_step()
    opt.second_step()
    w.grad = torch.tensor([0.0, 2.0, 0.0], dtype=F64)  # m = (1,0,0), sigma m = (.5,0,0)
    opt.first_step()
    opt.second_step()
    diag = opt.read_diagnostics()
    assert diag["noise_ratio"] == pytest.approx(math.sqrt(0.25 + 4) / 0.5, abs=1e-12)
    assert diag["cos_g_m"] == pytest.approx(0.0, abs=1e-12)


def test_full_component_with_inf_gradient_raises_and_keeps_the_ema():
    w, opt = make("full")
    perturbations(opt, w)
    ema = opt.state[w]["ema"].clone()
    w.grad = torch.tensor([math.inf, 0.0, 0.0], dtype=F64)
    before = w.detach().clone()
    with pytest.raises(FloatingPointError):
        opt.first_step()
    assert torch.equal(opt.state[w]["ema"], ema) and torch.equal(w.detach(), before)


def test_oracle_survives_state_dict_round_trip():
    w, opt = make("noise")
    opt.set_full_gradient({w: torch.tensor([1.0, 2.0, 3.0], dtype=F64)})
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    w2, opt2 = make("minibatch")
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.param_groups[0]["component"] == "noise"
    assert torch.equal(opt2.state[w2]["full_grad"], torch.tensor([1.0, 2.0, 3.0], dtype=F64))


def test_old_state_dicts_without_component_load():
    w, opt = make("noise")
    sd = opt.state_dict()
    del sd["param_groups"][0]["component"]
    w2, opt2 = make("noise")
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["component"] == "noise"


def test_validation():
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="component"):
        FriendlySAM([w], torch.optim.SGD, component="oracle", lr=0.1)
    with pytest.raises(ValueError, match="param group 1"):
        FriendlySAM(
            [{"params": [w]}, {"params": [torch.nn.Parameter(torch.zeros(1))], "component": "x"}], lr=0.1
        )
    opt = FriendlySAM([{"params": [w], "component": "full"}], torch.optim.SGD, lr=0.1)
    assert opt.param_groups[0]["component"] == "full" and opt.defaults["component"] == "noise"
    with pytest.raises(ValueError, match="2 tensors for 1"):
        opt.set_full_gradient([torch.zeros(3), torch.zeros(3)])
    with pytest.raises(ValueError, match="shape"):
        opt.set_full_gradient([torch.zeros(4)])
    with pytest.raises(ValueError, match="inf or nan"):
        opt.set_full_gradient([torch.tensor([0.0, math.nan, 0.0])])
    opt.set_full_gradient([None])
    assert torch.equal(opt.state[w]["full_grad"], torch.zeros(3))


def test_per_group_components():
    a = torch.nn.Parameter(torch.zeros(2, dtype=F64))
    b = torch.nn.Parameter(torch.zeros(2, dtype=F64))
    opt = FriendlySAM(
        [{"params": [a], "component": "full"}, {"params": [b], "component": "minibatch"}],
        torch.optim.SGD,
        rho=1.0,
        lmbda=0.5,
        lr=0.0,
    )
    for ga, gb in (([1.0, 0.0], [0.0, 1.0]), ([0.0, 1.0], [1.0, 0.0])):
        a.grad, b.grad = torch.tensor(ga, dtype=F64), torch.tensor(gb, dtype=F64)
        opt.first_step()
        pa, pb = a.detach().clone(), b.detach().clone()
        opt.second_step()
    # second step: a perturbed along its EMA (1, 0), b along its gradient (1, 0); one global norm
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(pa, torch.tensor([s, 0.0], dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(pb, torch.tensor([s, 0.0], dtype=F64), atol=1e-10, rtol=0)
