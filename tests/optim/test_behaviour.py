"""The optimizers in real training loops: equivalences, checkpoints, AMP, clipping, accumulation, errors."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from optim_helpers import make_batches, make_model, sam_iteration
from torch import nn

from friendly_sam import SAM, FriendlySAM, frozen_bn_stats

SGD_KW = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_identical(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def train(opt_cls, steps, seed=0, **kw):
    model = make_model(seed)
    opt = opt_cls(model.parameters(), **kw)
    for x, y in make_batches(steps):
        sam_iteration(model, opt, x, y)
    return model, opt


def test_sigma_zero_is_sam():
    fsam, _ = train(FriendlySAM, 5, base_optimizer=torch.optim.SGD, rho=0.1, sigma=0.0, **SGD_KW)
    sam, _ = train(SAM, 5, base_optimizer=torch.optim.SGD, rho=0.1, **SGD_KW)
    assert_identical(params_of(fsam), params_of(sam))


def test_first_fsam_step_is_a_sam_step_and_later_steps_differ():
    fsam, _ = train(FriendlySAM, 1, base_optimizer=torch.optim.SGD, rho=0.1, **SGD_KW)
    sam, _ = train(SAM, 1, base_optimizer=torch.optim.SGD, rho=0.1, **SGD_KW)
    assert_identical(params_of(fsam), params_of(sam))
    fsam, _ = train(FriendlySAM, 3, base_optimizer=torch.optim.SGD, rho=0.1, **SGD_KW)
    sam, _ = train(SAM, 3, base_optimizer=torch.optim.SGD, rho=0.1, **SGD_KW)
    assert any(not torch.equal(a, b) for a, b in zip(params_of(fsam), params_of(sam)))


@pytest.mark.parametrize("cls", [SAM, FriendlySAM])
@pytest.mark.parametrize("adaptive", [False, True])
def test_foreach_and_per_tensor_paths_agree_bitwise(cls, adaptive):
    a, _ = train(cls, 4, base_optimizer=torch.optim.SGD, rho=0.3, adaptive=adaptive, foreach=True, **SGD_KW)
    b, _ = train(cls, 4, base_optimizer=torch.optim.SGD, rho=0.3, adaptive=adaptive, foreach=False, **SGD_KW)
    assert_identical(params_of(a), params_of(b))


def test_weights_restored_in_place_and_bit_exactly():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.0)
    ptrs = [p.data_ptr() for p in model.parameters()]
    refs = list(model.parameters())
    for x, y in make_batches(3):
        before = params_of(model)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.first_step()
        assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before)), "no perturbation"
        nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step()
        assert_identical(params_of(model), before)  # lr = 0: the base step is the identity
    assert [p.data_ptr() for p in model.parameters()] == ptrs
    assert all(a is b for a, b in zip(model.parameters(), refs))


def test_step_with_closure_equals_explicit_steps_and_returns_clean_loss():
    explicit, _ = train(FriendlySAM, 3, base_optimizer=torch.optim.SGD, rho=0.2, **SGD_KW)
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.2, **SGD_KW)
    calls = []
    for x, y in make_batches(3):

        def closure(x=x, y=y):
            opt.zero_grad()
            with frozen_bn_stats(model) if calls and calls[-1] == "first" else _null():
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            calls.append("second" if calls and calls[-1] == "first" else "first")
            return loss

        expected_loss = nn.functional.cross_entropy(copy.deepcopy(model)(x), y)
        returned = opt.step(closure)
        assert torch.allclose(returned, expected_loss)
    assert_identical(params_of(model), params_of(explicit))


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize(
    "base,kw",
    [(torch.optim.SGD, SGD_KW), (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.05})],
    ids=["sgd-momentum", "adamw"],
)
@pytest.mark.parametrize("cls", [FriendlySAM, SAM])
def test_checkpoint_resume_is_bit_exact(cls, base, kw):
    batches = make_batches(8)
    model = make_model()
    opt = cls(model.parameters(), base, rho=0.1, **kw)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    for x, y in batches:
        sam_iteration(model, opt, x, y)
        sched.step()
    uninterrupted = params_of(model)

    model = make_model()
    opt = cls(model.parameters(), base, rho=0.1, **kw)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    for x, y in batches[:3]:
        sam_iteration(model, opt, x, y)
        sched.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model = make_model(seed=123)  # different init: everything must come from the checkpoint
    opt = cls(model.parameters(), base, rho=0.7, **kw)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    assert opt.param_groups[0]["rho"] == 0.1
    assert opt.base_optimizer.param_groups is opt.param_groups
    for x, y in batches[3:]:
        sam_iteration(model, opt, x, y)
        sched.step()
    assert_identical(params_of(model), uninterrupted)


def test_state_dict_carries_ema_and_base_state():
    _, opt = train(FriendlySAM, 2, base_optimizer=torch.optim.SGD, rho=0.1, **SGD_KW)
    sd = opt.state_dict()
    assert all("ema" in s for s in sd["state"].values())
    assert all("momentum_buffer" in s for s in sd["base_optimizer"]["state"].values())
    assert sd["param_groups"][0]["lmbda"] == 0.9 and sd["param_groups"][0]["lr"] == SGD_KW["lr"]


def test_incompatible_state_dicts_are_refused():
    model = make_model()
    fsam = FriendlySAM(model.parameters(), torch.optim.SGD, lr=0.1)
    sam = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="saved from SAM"):
        fsam.load_state_dict(sam.state_dict())
    with pytest.raises(ValueError, match="not a FriendlySAM state dict"):
        fsam.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


def test_lr_scheduler_and_add_param_group():
    model = make_model()
    head = nn.Linear(3, 3)
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    opt.add_param_group({"params": head.parameters(), "rho": 0.0, "lr": 0.5})
    assert len(opt.base_optimizer.param_groups) == 2
    assert opt.param_groups[1]["momentum"] == 0.9 and opt.param_groups[1]["sigma"] == 1.0
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()" warning
        for x, y in make_batches(2):
            before_head = params_of(head)
            loss = nn.functional.cross_entropy(head(model(x)), y)
            loss.backward()
            opt.first_step()
            assert_identical(params_of(head), before_head)  # rho = 0 in that group: not perturbed
            nn.functional.cross_entropy(head(model(x)), y).backward()
            opt.second_step()
            sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    assert opt.base_optimizer.param_groups[1]["lr"] == pytest.approx(0.125)
    with pytest.raises(ValueError, match="lmbda"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "lmbda": 1.0})


def test_gradient_clipping_applies_to_the_perturbed_gradient():
    batches = make_batches(3)
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, max_grad_norm=0.05, **SGD_KW)
    for x, y in batches:
        sam_iteration(model, opt, x, y)
    clipped = params_of(model)

    # The same by hand: clip what the base optimizer receives, after the weights are restored.
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, **SGD_KW)
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
        opt.first_step()
        with frozen_bn_stats(model):
            nn.functional.cross_entropy(model(x), y).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        assert norm > 0.05  # the clip is active in this test
        opt.second_step()
    assert_identical(params_of(model), clipped)


def test_gradient_accumulation_equals_the_large_batch():
    big = make_batches(3, batch=12)
    model_big = make_model()
    model_acc = make_model()
    for m in (model_big, model_acc):  # BatchNorm statistics differ per micro-batch by design; compare without
        m[1] = nn.Identity()
    opt_big = FriendlySAM(model_big.parameters(), torch.optim.SGD, rho=0.2, **SGD_KW)
    opt_acc = FriendlySAM(model_acc.parameters(), torch.optim.SGD, rho=0.2, **SGD_KW)
    for x, y in big:
        sam_iteration(model_big, opt_big, x, y)
        micro = list(zip(x.split(4), y.split(4)))
        for xs, ys in micro:  # first pass: accumulate the clean gradient of the whole batch
            (nn.functional.cross_entropy(model_acc(xs), ys) * len(ys) / len(y)).backward()
        opt_acc.first_step()
        for xs, ys in micro:  # second pass: accumulate at the perturbed weights
            (nn.functional.cross_entropy(model_acc(xs), ys) * len(ys) / len(y)).backward()
        opt_acc.second_step()
    for a, b in zip(model_big.parameters(), model_acc.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_frozen_bn_stats_keeps_running_statistics(momentum):
    bn = nn.BatchNorm1d(3, momentum=momentum)
    x = torch.randn(16, 3) * 3 + 1
    bn(x)
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    with frozen_bn_stats(bn):
        out = bn(x + 5)
    assert all(torch.equal(state[k], v) for k, v in bn.state_dict().items())
    assert bn.track_running_stats
    # Batch statistics are still used inside the block.
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    bn(x)
    assert bn.num_batches_tracked == 2


def test_bn_running_stats_updated_only_in_the_clean_pass():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.5, **SGD_KW)
    x, y = make_batches(1)[0]
    expected = copy.deepcopy(model[1]).train()
    expected(model[0](x))  # one clean pass' update of the running stats
    sam_iteration(model, opt, x, y)
    torch.testing.assert_close(model[1].running_mean, expected.running_mean)
    assert model[1].num_batches_tracked == 1


def _fp16_run(scaler_scale, inject_inf_at=None, steps=4):
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.2, **SGD_KW)
    scaler = torch.amp.GradScaler("cpu", init_scale=scaler_scale, growth_interval=1000)
    history = []
    for t, (x, y) in enumerate(make_batches(steps)):
        before = (params_of(model), [v["ema"].clone() for v in opt.state.values()])
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        if t == inject_inf_at:
            next(model.parameters()).grad[0].view(-1)[0] = float("inf")
        opt.first_step(scaler=scaler)
        with frozen_bn_stats(model):
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        opt.second_step(scaler=scaler)
        scaler.update()
        history.append((before, params_of(model), scaler.get_scale()))
    return model, opt, history


def test_grad_scaler_ema_sees_unscaled_gradients():
    ref, _ = train(FriendlySAM, 4, base_optimizer=torch.optim.SGD, rho=0.2, **SGD_KW)
    scaled, opt, _ = _fp16_run(2.0**12)
    # Power-of-two loss scaling of fp32 gradients is exact, so the unscaled run is reproduced exactly.
    assert_identical(params_of(scaled), params_of(ref))
    ref_ema = train(FriendlySAM, 4, base_optimizer=torch.optim.SGD, rho=0.2, **SGD_KW)[1]
    for a, b in zip(opt.state.values(), ref_ema.state.values()):
        assert torch.equal(a["ema"], b["ema"])


def test_grad_scaler_inf_in_clean_pass_skips_step_and_keeps_ema():
    _, opt, history = _fp16_run(2.0**12, inject_inf_at=2)
    (params_before, _), params_after, scale = history[2]
    assert_identical(params_after, params_before)  # no perturbation left behind, base step skipped
    assert scale == 2.0**11  # the scaler saw the overflow and lowered the scale
    assert history[3][2] == 2.0**11
    assert not all(torch.equal(a, b) for a, b in zip(history[3][1], params_after))  # training goes on


def test_grad_scaler_inf_leaves_ema_untouched():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.2, **SGD_KW)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    batches = make_batches(2)
    sam_iteration(model, opt, *batches[0], scaler=scaler)
    scaler.update()
    ema = [s["ema"].clone() for s in opt.state.values()]
    x, y = batches[1]
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    next(model.parameters()).grad.view(-1)[0] = float("nan")
    opt.first_step(scaler=scaler)
    assert all(torch.equal(a, s["ema"]) for a, s in zip(ema, opt.state.values()))


def test_fp16_autocast_with_grad_scaler_trains():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    x, y = make_batches(1, batch=32)[0]
    losses = []
    for _ in range(15):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        opt.first_step(scaler=scaler)
        with torch.autocast("cpu", dtype=torch.float16), frozen_bn_stats(model):
            loss2 = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss2).backward()
        opt.second_step(scaler=scaler)
        scaler.update()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_bf16_autocast_trains():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    x, y = make_batches(1, batch=32)[0]
    losses = []
    for _ in range(15):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(sam_iteration(model, opt, x, y).item())
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for s in opt.state.values() for p in s.values())


def test_non_finite_gradient_without_scaler_raises_and_changes_nothing():
    model, opt = train(FriendlySAM, 2, base_optimizer=torch.optim.SGD, rho=0.1, **SGD_KW)
    before = params_of(model)
    ema = [s["ema"].clone() for s in opt.state.values()]
    x, y = make_batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    next(model.parameters()).grad.view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="inf or nan"):
        opt.first_step()
    assert_identical(params_of(model), before)
    assert all(torch.equal(a, s["ema"]) for a, s in zip(ema, opt.state.values()))


@pytest.mark.parametrize("adaptive", [False, True])
def test_zero_gradient_gives_no_nan(adaptive):
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=0.1)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.first_step()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.second_step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rho": -0.1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": float("inf")}, "rho"),
        ({"lmbda": 1.0}, "lmbda"),
        ({"lmbda": -0.1}, "lmbda"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": float("inf")}, "sigma"),
        ({"adaptive": "yes"}, "adaptive"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"foreach": "auto"}, "foreach"),
    ],
)
def test_invalid_hyperparameters_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FriendlySAM(make_model().parameters(), torch.optim.SGD, lr=0.1, **kwargs)


def test_bad_base_optimizer():
    model = make_model()
    with pytest.raises(TypeError, match="pass the class"):
        FriendlySAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="Optimizer subclass"):
        SAM(model.parameters(), nn.Linear)


def test_call_order_errors():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="without first_step"):
        opt.second_step()
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    x, y = make_batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="perturbed"):
        opt.state_dict()
    with pytest.raises(RuntimeError, match="twice"):
        opt.first_step()


def test_sparse_gradients_are_refused():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = FriendlySAM(emb.parameters(), torch.optim.SGD, lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.first_step()


def test_zero_grad_false_keeps_the_clean_gradient():
    model = make_model()
    opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1)
    for x, y in make_batches(2):
        nn.functional.cross_entropy(model(x), y).backward()
        clean = [p.grad.clone() for p in model.parameters()]
        opt.first_step(zero_grad=False)
        assert_identical([p.grad for p in model.parameters()], clean)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step()
