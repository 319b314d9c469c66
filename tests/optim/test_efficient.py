"""Efficient variants of SAM / F-SAM: periodic perturbation (perturb_every, between="base"|"looksam").

Exactness (k = 1 is the plain optimizer bit for bit), the meaning of each step against a hand-written
reference, F-SAM's EMA on unperturbed steps, resume mid-period, the loop protocol and its failure modes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings

import pytest
import torch
from optim_helpers import make_batches, make_model, sam_iteration
from torch import nn

from friendly_sam import SAM, FriendlySAM, frozen_bn_stats
from friendly_sam.optim import BETWEEN_MODES

SGD_KW = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def efficient_iteration(model, opt, x, y, **step_kw):
    """The documented loop: the second pass only when the optimizer perturbed."""
    scaler = step_kw.get("scaler")
    scale = scaler.scale if scaler is not None else (lambda v: v)
    loss = nn.functional.cross_entropy(model(x), y)
    scale(loss).backward()
    opt.first_step(zero_grad=True, **step_kw)
    if opt.is_perturbed:
        with frozen_bn_stats(model):
            scale(nn.functional.cross_entropy(model(x), y)).backward()
    opt.second_step(zero_grad=True, **step_kw)
    return loss.detach()


def run(cls, steps, loop=efficient_iteration, seed=0, **kw):
    model = make_model(seed)
    opt = cls(model.parameters(), torch.optim.SGD, **kw)
    for x, y in make_batches(steps):
        loop(model, opt, x, y)
    return model, opt


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("cls", [SAM, FriendlySAM])
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("between", BETWEEN_MODES)
def test_every_step_perturbed_is_the_plain_optimizer_bit_for_bit(cls, foreach, between):
    plain, plain_opt = run(cls, 5, loop=sam_iteration, rho=0.2, foreach=foreach, **SGD_KW)
    eff, eff_opt = run(cls, 5, rho=0.2, foreach=foreach, perturb_every=1, between=between, **SGD_KW)
    assert_identical(params_of(plain), params_of(eff))
    assert_identical(
        [s["ema"] for s in plain_opt.state.values() if "ema" in s],
        [s["ema"] for s in eff_opt.state.values() if "ema" in s],
    )


@pytest.mark.parametrize("cls", [SAM, FriendlySAM])
@pytest.mark.parametrize("between", BETWEEN_MODES)
def test_foreach_and_per_tensor_agree_bitwise_with_periodic_steps(cls, between):
    a, _ = run(cls, 7, rho=0.2, foreach=True, perturb_every=3, between=between, **SGD_KW)
    b, _ = run(cls, 7, rho=0.2, foreach=False, perturb_every=3, between=between, **SGD_KW)
    assert_identical(params_of(a), params_of(b))


# ----------------------------------------------------------------------------- what each step does
def _grad_at(model, x, y, frozen=False):
    model.zero_grad(set_to_none=True)
    with frozen_bn_stats(model) if frozen else contextlib.nullcontext():
        nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _norm(ts):
    return torch.sqrt(sum((t.double() ** 2).sum() for t in ts))


def test_periodic_base_steps_match_a_hand_written_reference():
    """k = 3 SAM with plain SGD (no momentum: the applied gradient is (w - w') / lr): steps 0, 3, 6
    apply the gradient at w + rho g/||g||, the others the clean gradient."""
    lr, rho = 0.1, 0.3
    model = make_model()
    ref = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr, perturb_every=3)
    for t, (x, y) in enumerate(make_batches(7)):
        assert opt.next_step_perturbs == (t % 3 == 0)
        g = _grad_at(ref, x, y)
        applied = g
        if t % 3 == 0:
            scale = rho / (_norm(g) + 1e-12)
            with torch.no_grad():
                for p, gi in zip(ref.parameters(), g):
                    p.add_(gi, alpha=float(scale))
            applied = _grad_at(ref, x, y, frozen=True)
            with torch.no_grad():
                for p, gi in zip(ref.parameters(), g):
                    p.sub_(gi, alpha=float(scale))
        with torch.no_grad():
            for p, a in zip(ref.parameters(), applied):
                p.sub_(a, alpha=lr)
        efficient_iteration(model, opt, x, y)
        for a, b in zip(params_of(model), params_of(ref)):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
        for a, b in zip(model.buffers(), ref.buffers()):  # BatchNorm statistics: clean passes only
            assert torch.allclose(a.double(), b.double(), atol=1e-6)
    assert opt.steps_taken == 7


def test_looksam_adds_the_stored_orthogonal_component_scaled_to_the_gradient_norm():
    lr, rho, alpha = 0.1, 0.3, 0.5
    model = make_model()
    opt = SAM(
        model.parameters(),
        torch.optim.SGD,
        rho=rho,
        lr=lr,
        perturb_every=2,
        between="looksam",
        looksam_alpha=alpha,
    )
    (x0, y0), (x1, y1) = make_batches(2)
    # step 0 (perturbed): record the clean and the perturbed gradient
    nn.functional.cross_entropy(model(x0), y0).backward()
    g = [p.grad.clone() for p in model.parameters()]
    opt.first_step()
    assert opt.is_perturbed
    with frozen_bn_stats(model):
        nn.functional.cross_entropy(model(x0), y0).backward()
    gs = [p.grad.clone() for p in model.parameters()]
    opt.second_step()
    dot = sum((a.double() * b.double()).sum() for a, b in zip(gs, g))
    v = [a.double() - dot / _norm(g) ** 2 * b.double() for a, b in zip(gs, g)]
    assert abs(float(sum((vi * gi.double()).sum() for vi, gi in zip(v, g)))) < 1e-6  # orthogonal to g
    stored = opt.buffer_tensors()["looksam_component"]
    for a, b in zip(stored, v):
        assert torch.allclose(a.double(), b, atol=1e-6)
    # step 1 (unperturbed): one pass, the base step applies g1 + alpha ||g1|| / ||v|| v
    before = params_of(model)
    nn.functional.cross_entropy(model(x1), y1).backward()
    g1 = [p.grad.clone().double() for p in model.parameters()]
    opt.first_step()
    assert not opt.is_perturbed
    opt.second_step()
    expected = [a + alpha * _norm(g1) / _norm(v) * b for a, b in zip(g1, v)]
    for w0, w1, e in zip(before, params_of(model), expected):
        assert torch.allclose((w0.double() - w1.double()) / lr, e, atol=1e-4)


def test_fsam_ema_averages_every_clean_gradient_including_unperturbed_steps():
    lmbda = 0.6
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.2, lmbda=lmbda, perturb_every=3, **SGD_KW)
    expected = None
    for x, y in make_batches(8):
        nn.functional.cross_entropy(model(x), y).backward()
        g = [p.grad.clone().double() for p in model.parameters()]
        expected = g if expected is None else [lmbda * m + (1 - lmbda) * gi for m, gi in zip(expected, g)]
        opt.first_step()
        if opt.is_perturbed:
            with frozen_bn_stats(model):
                nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step()
    emas = [opt.state[p]["ema"] for p in model.parameters()]
    for a, b in zip(emas, expected):
        assert torch.allclose(a.double(), b, atol=1e-6)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("cls", [SAM, FriendlySAM])
@pytest.mark.parametrize("between", BETWEEN_MODES)
def test_resume_mid_period_is_bit_exact(cls, between):
    kw = dict(rho=0.2, perturb_every=4, between=between, **SGD_KW)
    batches = make_batches(8)
    model = make_model()
    opt = cls(model.parameters(), torch.optim.SGD, **kw)
    for x, y in batches:
        efficient_iteration(model, opt, x, y)
    model2 = make_model()
    opt2 = cls(model2.parameters(), torch.optim.SGD, **kw)
    for x, y in batches[:3]:
        efficient_iteration(model2, opt2, x, y)
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model3 = make_model(seed=5)  # other weights: everything must come from the checkpoint
    opt3 = cls(model3.parameters(), torch.optim.SGD, **kw)
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    assert opt3.steps_taken == 3 and not opt3.next_step_perturbs
    for x, y in batches[3:]:
        efficient_iteration(model3, opt3, x, y)
    assert_identical(params_of(model), params_of(model3))
    assert_identical(list(model.buffers()), list(model3.buffers()))


def test_state_dict_of_an_older_format_loads_as_step_zero():
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, perturb_every=2, **SGD_KW)
    state = opt.state_dict()
    for key in ("steps", "perturb_every", "between", "component_valid"):
        del state["two_pass"][key]
    state["two_pass"]["format"] = 2
    opt.load_state_dict(state)
    assert opt.steps_taken == 0 and opt.next_step_perturbs


# ----------------------------------------------------------------------------- the loop protocol
@pytest.mark.parametrize("between", BETWEEN_MODES)
def test_a_loop_that_always_runs_the_second_pass_stays_correct(between):
    """A loop written for plain SAM (second pass on every step) gets the same trajectory, only slower."""
    a, _ = run(FriendlySAM, 6, loop=sam_iteration, rho=0.2, perturb_every=3, between=between, **SGD_KW)
    b, _ = run(FriendlySAM, 6, rho=0.2, perturb_every=3, between=between, **SGD_KW)
    assert_identical(params_of(a), params_of(b))


@pytest.mark.parametrize("between", BETWEEN_MODES)
def test_step_with_closure_calls_it_once_on_unperturbed_steps(between):
    a, _ = run(FriendlySAM, 6, rho=0.2, perturb_every=3, between=between, **SGD_KW)
    model = make_model()
    opt = FriendlySAM(
        model.parameters(), torch.optim.SGD, rho=0.2, perturb_every=3, between=between, **SGD_KW
    )
    calls = []
    for t, (x, y) in enumerate(make_batches(6)):

        def closure(x=x, y=y, t=t):
            opt.zero_grad()
            with frozen_bn_stats(model) if opt.is_perturbed else contextlib.nullcontext():
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            calls.append(t)
            return loss

        opt.step(closure)
    assert calls == [0, 0, 1, 2, 3, 3, 4, 5]
    assert_identical(params_of(a), params_of(model))


def test_first_step_twice_on_an_unperturbed_step_is_refused():
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, perturb_every=2, **SGD_KW)
    (x, y), (x1, y1) = make_batches(2)
    efficient_iteration(model, opt, x, y)
    nn.functional.cross_entropy(model(x1), y1).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="second_step"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="second_step"):
        opt.state_dict()
    opt.second_step()
    assert opt.steps_taken == 2


def test_step_hooks_fire_once_per_step_of_either_kind():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, perturb_every=2, **SGD_KW)
    pre, post = [], []
    opt.register_step_pre_hook(lambda *a: pre.append(1))
    opt.register_step_post_hook(lambda *a: post.append(1))
    for x, y in make_batches(5):
        efficient_iteration(model, opt, x, y)
    assert len(pre) == len(post) == 5


def test_lr_scheduler_steps_without_warning():
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, perturb_every=2, **SGD_KW)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in make_batches(3):
            efficient_iteration(model, opt, x, y)
            sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 / 8)


@pytest.mark.parametrize("between", BETWEEN_MODES)
def test_grad_scaler_overflow_on_an_unperturbed_step_is_skipped_and_recorded(between):
    model = make_model()
    opt = FriendlySAM(
        model.parameters(), torch.optim.SGD, rho=0.2, perturb_every=2, between=between, **SGD_KW
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    batches = make_batches(4)
    for x, y in batches[:1]:
        efficient_iteration(model, opt, x, y, scaler=scaler)
        scaler.update()
    x, y = batches[1]
    before, ema_before = params_of(model), [s["ema"].clone() for s in opt.state.values()]
    scale = scaler.get_scale()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    next(model.parameters()).grad.view(-1)[0] = float("inf")
    opt.first_step(scaler=scaler)
    assert not opt.is_perturbed
    opt.second_step(scaler=scaler)
    scaler.update()
    assert scaler.get_scale() == scale / 2
    assert_identical(before, params_of(model))
    assert_identical(ema_before, [s["ema"] for s in opt.state.values()])
    assert opt.steps_taken == 2  # a skipped step still counts: the period does not shift
    for x, y in batches[2:]:  # and training goes on
        efficient_iteration(model, opt, x, y, scaler=scaler)
        scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_grad_scaler_without_overflow_equals_the_unscaled_run():
    a, _ = run(FriendlySAM, 5, rho=0.2, perturb_every=2, between="looksam", **SGD_KW)
    model = make_model()
    opt = FriendlySAM(
        model.parameters(), torch.optim.SGD, rho=0.2, perturb_every=2, between="looksam", **SGD_KW
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for x, y in make_batches(5):
        efficient_iteration(model, opt, x, y, scaler=scaler)
        scaler.update()
    for p, q in zip(params_of(a), params_of(model)):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)


def test_non_finite_clean_gradient_on_an_unperturbed_step_raises_and_changes_nothing():
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, perturb_every=2, **SGD_KW)
    (x, y), (x1, y1) = make_batches(2)
    efficient_iteration(model, opt, x, y)
    before = params_of(model)
    nn.functional.cross_entropy(model(x1), y1).backward()
    next(model.parameters()).grad.view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="unperturbed step"):
        opt.first_step()
    assert_identical(before, params_of(model))
    assert opt.steps_taken == 1


def test_max_grad_norm_clips_unperturbed_steps_too():
    model = make_model()
    ref = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, perturb_every=2, max_grad_norm=1e-3)
    batches = make_batches(2)
    efficient_iteration(model, opt, *batches[0])
    ref.load_state_dict(model.state_dict())
    g = _grad_at(ref, *batches[1])
    factor = min(1.0, 1e-3 / (float(_norm(g)) + 1e-6))
    efficient_iteration(model, opt, *batches[1])
    for w0, w1, gi in zip(params_of(ref), params_of(model), g):
        assert torch.allclose(w0 - w1, 0.1 * factor * gi, atol=1e-7)


def test_buffers_are_accounted():
    _, sam = run(SAM, 3, rho=0.1, perturb_every=2, **SGD_KW)
    assert set(sam.buffer_tensors()) == {"saved_weights"}
    _, look = run(FriendlySAM, 3, rho=0.1, perturb_every=2, between="looksam", **SGD_KW)
    buffers = look.buffer_tensors()
    assert set(buffers) == {"saved_weights", "ema", "looksam_component"}
    assert len(buffers["looksam_component"]) == len(list(look.param_groups[0]["params"]))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"perturb_every": 0}, "perturb_every"),
        ({"perturb_every": 2.0}, "perturb_every"),
        ({"perturb_every": True}, "perturb_every"),
        ({"between": "skip"}, "between"),
        ({"looksam_alpha": -1.0}, "looksam_alpha"),
    ],
)
def test_invalid_options_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        FriendlySAM(make_model().parameters(), torch.optim.SGD, rho=0.1, **kw)


def test_grad_scaler_step_with_closure_equals_the_manual_loop_with_periodic_steps():
    kw = dict(rho=0.2, perturb_every=2, between="looksam", **SGD_KW)
    batches = make_batches(5)
    manual = make_model()
    manual_opt = FriendlySAM(manual.parameters(), torch.optim.SGD, **kw)
    manual_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for x, y in batches:
        efficient_iteration(manual, manual_opt, x, y, scaler=manual_scaler)
        manual_scaler.update()
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(torch.ones(()))  # GradScaler creates its scale at the first scale()
    calls = []
    for x, y in batches:

        def closure(x=x, y=y):
            opt.zero_grad()
            with frozen_bn_stats(model) if opt.is_perturbed else contextlib.nullcontext():
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            calls.append(1)
            return loss

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's notice about the grad_scaler kwarg
            scaler.step(opt, closure)
        scaler.update()
    assert len(calls) == 8  # 3 perturbed steps x 2 + 2 unperturbed x 1
    for p, q in zip(params_of(manual), params_of(model)):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)
