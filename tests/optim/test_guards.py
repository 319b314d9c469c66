"""Misuse refused clearly (issue 21 item 6): hyperparameters rewritten after construction, parameters listed
twice, closure-requiring bases, meta / lazy parameters; a closure that never zeroes gradients stays right.
Also ``ascent_fraction`` (an optimizer-level option) and the explicit step phase."""

from __future__ import annotations

import math

import pytest
import torch
from optim_helpers import make_batches, make_model
from torch import nn

from friendly_sam import SAM, FriendlySAM
from friendly_sam.optim import Phase


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize(
    "cls,key,value,valid",
    [
        (FriendlySAM, "rho", -0.5, ">= 0.0"),
        (FriendlySAM, "rho", math.nan, ">= 0.0"),
        (FriendlySAM, "sigma", -1.0, ">= 0.0"),
        (FriendlySAM, "lmbda", 1.0, "[0.0, 1.0)"),
        (FriendlySAM, "lmbda", math.inf, "[0.0, 1.0)"),
        (SAM, "rho", -0.5, ">= 0.0"),
        (SAM, "adaptive", "yes", "True or False"),
    ],
)
def test_a_hyperparameter_rewritten_after_construction_is_refused_at_the_step(cls, key, value, valid) -> None:
    model = make_model()
    opt = cls([{"params": model[0].parameters()}, {"params": model[4].parameters()}], lr=0.1)
    (x, y), *_ = make_batches(1)
    opt.param_groups[1][key] = value  # what a custom schedule does
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, x, y).backward()
    with pytest.raises(ValueError) as info:
        opt.first_step()
    message = str(info.value)
    assert f"{key}={value!r}" in message and "param group 1" in message and valid in message
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.phase is Phase.IDLE


def test_a_parameter_listed_twice_is_refused() -> None:
    model = make_model()
    weight = model[0].weight
    with pytest.raises(ValueError, match="listed twice in this group"):
        FriendlySAM([weight, model[0].bias, weight], lr=0.1)
    with pytest.raises(ValueError, match="in an earlier param group too"):
        FriendlySAM([{"params": [weight]}, {"params": [model[0].bias, weight]}], lr=0.1)
    opt = SAM([weight], lr=0.1)
    with pytest.raises(ValueError, match="in an earlier param group too"):
        opt.add_param_group({"params": [weight]})


def test_a_closure_requiring_base_optimizer_is_refused() -> None:
    with pytest.raises(TypeError, match="LBFGS.*needs a closure"):
        FriendlySAM(make_model().parameters(), torch.optim.LBFGS, lr=0.1)


def test_meta_and_lazy_parameters_are_refused_with_what_to_do() -> None:
    with torch.device("meta"):
        meta = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        FriendlySAM(meta.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not initialised yet.*forward pass"):
        SAM(nn.LazyLinear(2).parameters(), lr=0.1)


def _closure_run(zeroes: bool, steps: int = 4, **kw):
    model = make_model()
    opt = FriendlySAM(model.parameters(), lr=0.1, momentum=0.9, rho=0.2, **kw)
    for x, y in make_batches(steps):

        def closure(x=x, y=y):
            if zeroes:
                opt.zero_grad()
            loss = _loss(model, x, y)
            loss.backward()
            return loss

        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kw", [{}, {"perturb_every": 2}], ids=["every", "k2"])
def test_a_closure_that_never_zeroes_gradients_gives_the_same_step(kw) -> None:
    want, got = _closure_run(True, **kw), _closure_run(False, **kw)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_a_gradient_computed_before_step_closure_is_still_refused() -> None:
    model = make_model()
    opt = FriendlySAM(model.parameters(), lr=0.1)
    (x, y), *_ = make_batches(1)
    _loss(model, x, y).backward()
    with pytest.raises(RuntimeError, match="found gradients computed before it"):
        opt.step(lambda: _loss(model, x, y).backward())


@pytest.mark.parametrize("cls", [SAM, FriendlySAM])
def test_ascent_fraction_is_an_optimizer_option(cls) -> None:
    params = make_model().parameters()
    assert cls(params, lr=0.1).ascent_fraction == 1.0
    opt = cls(make_model().parameters(), lr=0.1, ascent_fraction=0.25)
    assert opt.ascent_fraction == 0.25
    assert opt.state_dict()["two_pass"]["ascent_fraction"] == 0.25
    for bad in (0, 0.0, -0.1, 1.5, math.nan, True, "0.5"):
        with pytest.raises(ValueError, match=r"ascent_fraction.*\(0, 1\]"):
            cls(make_model().parameters(), lr=0.1, ascent_fraction=bad)


def test_the_step_moves_through_one_explicit_phase() -> None:
    model = make_model()
    opt = FriendlySAM(model.parameters(), lr=0.1, perturb_every=2)
    (x, y), *_ = make_batches(1)
    seen = [opt.phase]
    for _ in range(2):
        _loss(model, x, y).backward()
        opt.first_step()
        seen.append(opt.phase)
        if opt.is_perturbed:
            _loss(model, x, y).backward()
        opt.second_step()
        seen.append(opt.phase)
    assert seen == [Phase.IDLE, Phase.PERTURBED, Phase.IDLE, Phase.STEPPED, Phase.IDLE]


def test_saved_weight_buffers_exist_before_the_first_step() -> None:
    model = make_model()
    opt = SAM(model.parameters(), lr=0.1)
    saved = opt.buffer_tensors()["saved_weights"]
    assert [b.shape for b in saved] == [p.shape for p in model.parameters()]
