"""torch's optimizer protocols through the wrapper, in real loops: GradScaler.step(opt, closure), step
hooks, momentum-cycling schedulers, copies; migration arguments; refusals of silent failures."""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import warnings

import pytest
import torch
from optim_helpers import make_batches, make_model, sam_iteration
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from friendly_sam import SAM, FriendlySAM, frozen_bn_stats
from friendly_sam.optim import COMPONENTS

SGD_KW = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def _poison(model):
    next(model.parameters()).grad.view(-1)[0] = float("inf")


# ----------------------------------------------------------------------------- GradScaler.step(opt, closure)
def _manual_amp(batches, inject):
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.2, **SGD_KW)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trace = []
    for i, (x, y) in enumerate(batches):
        opt.zero_grad()
        scaler.scale(_loss(model, x, y)).backward()
        if inject == (i, "clean"):
            _poison(model)
        opt.first_step(scaler=scaler)
        with frozen_bn_stats(model):
            scaler.scale(_loss(model, x, y)).backward()
        if inject == (i, "perturbed"):
            _poison(model)
        opt.second_step(scaler=scaler)
        scaler.update()
        trace.append((params_of(model), [s["ema"].clone() for s in opt.state.values()], scaler.get_scale()))
    return trace


def _scaled_closure(model, zero_grad, opt, scaler, x, y, inject_here):
    """The two-pass closure under fp16 loss scaling: BatchNorm frozen in the perturbed pass; ``inject_here``
    ("clean" / "perturbed" / None) poisons that pass's gradient with inf."""

    def closure():
        zero_grad()
        second = opt.is_perturbed
        with frozen_bn_stats(model) if second else contextlib.nullcontext():
            loss = _loss(model, x, y)
        scaler.scale(loss).backward()
        if inject_here == ("perturbed" if second else "clean"):
            _poison(model)
        return loss

    return closure


def _where(inject, i):
    return inject[1] if inject is not None and inject[0] == i else None


def _closure_amp(batches, inject, unscale_first=False):
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.2, **SGD_KW)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    # GradScaler creates its scale at the first scaler.scale(); scaler.step() before that asserts.
    scaler.scale(torch.ones(()))
    trace = []
    for i, (x, y) in enumerate(batches):
        closure = _scaled_closure(model, opt.zero_grad, opt, scaler, x, y, _where(inject, i))
        if unscale_first:
            closure()
            scaler.unscale_(opt)
            opt.zero_grad()  # (a gradient left before step(closure) is refused on its own)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's notice about the grad_scaler kwarg
            scaler.step(opt, closure)  # what accelerate's fp16 AcceleratedOptimizer.step(closure) calls
        scaler.update()
        trace.append((params_of(model), [s["ema"].clone() for s in opt.state.values()], scaler.get_scale()))
    return trace


@pytest.mark.parametrize(
    "inject", [None, (2, "clean"), (2, "perturbed")], ids=["clean-run", "inf-w", "inf-w+e"]
)
def test_grad_scaler_step_with_closure_equals_the_manual_loop(inject):
    batches = make_batches(4)
    manual, closure = _manual_amp(batches, inject), _closure_amp(batches, inject)
    for (pm, em, sm), (pc, ec, sc) in zip(manual, closure):
        assert sm == sc
        for a, b in zip(pm + em, pc + ec):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
    if inject is not None:
        assert manual[2][2] == manual[1][2] / 2  # the overflow was recorded: the scale went down
        assert all(torch.equal(a, b) for a, b in zip(manual[2][0], manual[1][0]))  # step skipped
    # Power-of-two scaling is exact in fp32: without overflow the run equals the unscaled one.
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.2, **SGD_KW)
    for x, y in batches[:2]:
        sam_iteration(model, opt, x, y)
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), closure[1][0]))


def test_unscale_before_scaler_step_with_closure_is_refused_clearly():
    with pytest.raises(RuntimeError, match="do not call scaler.unscale_"):
        _closure_amp(make_batches(1), None, unscale_first=True)


def test_newer_attribute_protocol_without_a_scaler_in_reach_is_refused_not_misapplied():
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    opt.found_inf, opt.grad_scale = torch.zeros(()), torch.ones(())
    with pytest.raises(RuntimeError, match="first_step\\(scaler"):
        opt.step(lambda: _loss(model, *make_batches(1)[0]).backward())


@pytest.mark.parametrize(
    "inject", [None, (2, "clean"), (2, "perturbed")], ids=["clean-run", "inf-w", "inf-w+e"]
)
def test_accelerate_fp16_step_with_closure_equals_the_manual_loop(inject):
    """accelerate wraps step() as (*args, **kwargs), so GradScaler takes its newer attribute protocol."""
    pytest.importorskip("accelerate")
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    Accelerator(cpu=True)  # its state must exist; on CPU it makes no scaler, so we hand it one
    batches = make_batches(4)
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.2, **SGD_KW)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    wrapped = AcceleratedOptimizer(opt, device_placement=False, scaler=scaler)
    scaler.scale(torch.ones(()))
    trace = []
    for i, (x, y) in enumerate(batches):
        closure = _scaled_closure(model, wrapped.zero_grad, opt, scaler, x, y, _where(inject, i))
        wrapped.step(closure)  # GradScaler.step(opt, closure); scaler.update()
        trace.append((params_of(model), [s["ema"].clone() for s in opt.state.values()], scaler.get_scale()))
    for (pm, em, sm), (pc, ec, sc) in zip(_manual_amp(batches, inject), trace):
        assert sm == sc
        for a, b in zip(pm + em, pc + ec):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- step hooks
def test_step_hooks_fire_once_per_full_step():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, **SGD_KW)
    events = []
    opt.register_step_pre_hook(lambda o, a, k: events.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: events.append("post"))
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: events.append("gpre") if o is opt else None),
        register_optimizer_step_post_hook(lambda o, a, k: events.append("gpost") if o is opt else None),
    ]
    try:
        batches = make_batches(2)
        x, y = batches[0]
        _loss(model, x, y).backward()
        opt.first_step()
        assert events == ["gpre", "pre"]
        with frozen_bn_stats(model):
            _loss(model, x, y).backward()
        opt.second_step()
        assert events == ["gpre", "pre", "post", "gpost"]
        events.clear()
        x, y = batches[1]

        def closure():
            opt.zero_grad()
            loss = _loss(model, x, y)
            loss.backward()
            return loss

        opt.step(closure)
        assert events == ["gpre", "pre", "post", "gpost"]
    finally:
        for h in handles:
            h.remove()


def test_step_with_a_failing_second_closure_restores_the_weights():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.5, **SGD_KW)
    x, y = make_batches(1)[0]
    before = params_of(model)
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. the user stops training during the perturbed pass
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert not opt.is_perturbed
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))


def test_davda54_style_backward_before_step_closure_is_refused():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, **SGD_KW)
    batches = make_batches(3)

    def closure(x, y):
        loss = _loss(model, x, y)
        loss.backward()  # davda54 / pytorch-optimizer closures do not zero the gradients
        return loss

    x, y = batches[0]
    _loss(model, x, y).backward()
    with pytest.raises(RuntimeError, match="runs BOTH passes"):
        opt.step(lambda: closure(x, y))
    assert not opt.is_perturbed
    opt.zero_grad()
    for x, y in batches[1:]:  # our style: the closure zeroes; the gradients step() leaves are fine

        def ours(x=x, y=y):
            opt.zero_grad()
            return closure(x, y)

        opt.step(ours)
    model.zero_grad(set_to_none=False)  # zero tensors are no foreign gradient either
    opt.step(ours)


# ----------------------------------------------------------------------------- schedulers that cycle momentum
@pytest.mark.parametrize(
    "base,kw,key",
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, "momentum"), (torch.optim.Adam, {"lr": 1e-2}, "betas")],
    ids=["sgd", "adam"],
)
@pytest.mark.parametrize("sched", ["onecycle", "cyclic"])
def test_momentum_cycling_schedulers_reach_the_base_optimizer(base, kw, key, sched):
    model = make_model()
    opt = FriendlySAM(model.parameters(), base, rho=0.1, **kw)
    assert opt.defaults[key] == opt.base_optimizer.defaults[key]
    if sched == "onecycle":
        s = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=6)
    else:
        s = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=3)
    seen = []
    for x, y in make_batches(4):
        sam_iteration(model, opt, x, y)
        s.step()
        value = opt.base_optimizer.param_groups[0][key]
        seen.append(value[0] if key == "betas" else value)
    assert len(set(seen)) > 1  # the momentum moved, and the base optimizer sees it


# ----------------------------------------------------------------------------- copies
def _continue(model, opt, batches):
    for x, y in batches:
        sam_iteration(model, opt, x, y)
    return params_of(model)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("cls", [FriendlySAM, SAM])
def test_copied_optimizer_continues_identically(cls, how):
    batches = make_batches(5)
    model = make_model()
    opt = cls(model.parameters(), torch.optim.SGD, rho=0.1, max_grad_norm=1.0, **SGD_KW)
    _continue(model, opt, batches[:2])
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    elif how == "pickle":
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    else:  # torch.save of the state, read back weights-only: torch's weights-only unpickler cannot
        # rebuild optimizer *objects* (their state is a defaultdict), so a file never needs an unsafe load
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        model2 = make_model(seed=1)
        opt2 = cls(model2.parameters(), torch.optim.SGD, rho=0.5, max_grad_norm=1.0, **SGD_KW)
        model2.load_state_dict(saved["model"])
        opt2.load_state_dict(saved["optimizer"])
    assert opt2.base_optimizer.param_groups is opt2.param_groups
    assert all(a is b for a, b in zip(opt2.param_groups[0]["params"], model2.parameters()))
    assert opt2.max_grad_norm == 1.0 and opt2.param_groups[0]["rho"] == 0.1
    copied = _continue(model2, opt2, batches[2:])
    expected = _continue(model, opt, batches[2:])
    assert all(torch.equal(a, b) for a, b in zip(copied, expected))


# ----------------------------------------------------------------------------- migration arguments
def test_pytorch_optimizer_arguments():
    model = make_model()
    FriendlySAM(model.parameters(), torch.optim.SGD, perturb_eps=1e-12, use_gc=False, lr=0.1)
    with pytest.raises(ValueError, match="NORM_EPS = 1e-12"):
        FriendlySAM(model.parameters(), torch.optim.SGD, perturb_eps=1e-8, lr=0.1)
    with pytest.raises(ValueError, match="gradient centralization"):
        SAM(model.parameters(), torch.optim.SGD, use_gc=True, lr=0.1)
    with pytest.raises(TypeError, match="unknown argument.*betas.*own arguments: rho, sigma.*SGD"):
        FriendlySAM(model.parameters(), torch.optim.SGD, lr=0.1, betas=(0.9, 0.99))


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -0.1])
def test_non_finite_or_negative_lr_is_refused(lr):
    model = make_model()
    with pytest.raises(ValueError, match="invalid lr"):
        FriendlySAM(model.parameters(), torch.optim.SGD, lr=lr)
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="invalid lr in param group 1"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "lr": lr})


def test_components_vocabulary_is_exported():
    assert COMPONENTS == ("noise", "full", "minibatch")


# ----------------------------------------------------------------------------- second_step checks g'
def test_non_finite_perturbed_gradient_raises_restores_weights_and_skips_base_step():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, **SGD_KW)
    for x, y in make_batches(2):
        sam_iteration(model, opt, x, y)
    before = params_of(model)
    momentum = [s["momentum_buffer"].clone() for s in opt.base_optimizer.state.values()]
    x, y = make_batches(1, seed=7)[0]
    _loss(model, x, y).backward()
    opt.first_step()
    _loss(model, x, y).backward()
    _poison(model)
    with pytest.raises(FloatingPointError, match="perturbed gradient holds inf or nan"):
        opt.second_step()
    assert not opt.is_perturbed
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))
    assert all(
        torch.equal(a, s["momentum_buffer"]) for a, s in zip(momentum, opt.base_optimizer.state.values())
    )
    opt.zero_grad()  # the offending gradient is left for inspection
    sam_iteration(model, opt, x, y)  # training can go on


def test_clipped_non_finite_perturbed_gradient_raises_too():
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, max_grad_norm=1.0, **SGD_KW)
    x, y = make_batches(1)[0]
    _loss(model, x, y).backward()
    opt.first_step()
    _loss(model, x, y).backward()
    _poison(model)
    with pytest.raises(FloatingPointError):
        opt.second_step()


# ----------------------------------------------------------------------------- transactional first_step
@pytest.mark.parametrize("adaptive", [False, True])
def test_first_step_that_fails_part_way_leaves_weights_and_state_unchanged(adaptive):
    torch.manual_seed(0)
    wide, narrow = nn.Linear(3, 3).double(), nn.Linear(3, 3)
    params = list(wide.parameters()) + list(narrow.parameters())
    opt = FriendlySAM(params, torch.optim.SGD, rho=1e-3, adaptive=adaptive, lr=0.1)
    x = torch.randn(4, 3)

    def backward():
        (wide(x.double()).sum() + narrow(x).sum()).backward()

    backward()
    opt.first_step()
    backward()
    opt.second_step()
    before = [p.detach().clone() for p in params]
    ema = [opt.state[p]["ema"].clone() for p in params]
    opt.param_groups[0]["rho"] = 1e300  # fits float64, overflows float32
    backward()
    with pytest.raises((FloatingPointError, RuntimeError)):
        opt.first_step()
    assert not opt.is_perturbed
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    if not adaptive:  # refused before any change; ASAM's scale is only known after the EMA update
        assert all(torch.equal(a, opt.state[p]["ema"]) for a, p in zip(ema, params))


# ----------------------------------------------------------------------------- state dicts of another base
def test_state_dict_of_another_base_optimizer_is_refused_clearly():
    model = make_model()
    sgd = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, **SGD_KW)
    for x, y in make_batches(2):
        sam_iteration(model, sgd, x, y)
    adamw = FriendlySAM(model.parameters(), torch.optim.AdamW, lr=1e-3)
    state = sgd.state_dict()
    with pytest.raises(ValueError, match="base optimizer SGD.*wraps AdamW"):
        adamw.load_state_dict(state)
    old = copy.deepcopy(state)  # the previous format had no base_class entry
    del old["two_pass"]["base_class"]
    old["two_pass"]["format"] = 1
    with pytest.raises(ValueError, match="another optimizer.*momentum.*wraps AdamW"):
        adamw.load_state_dict(old)
    again = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, **SGD_KW)
    again.load_state_dict(old)  # an old state dict of the right base still loads
    with pytest.raises(ValueError, match="base optimizer AdamW.*wraps SGD"):
        again.load_state_dict(adamw.state_dict())
