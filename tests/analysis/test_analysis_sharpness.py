import json
import math

import pytest
import torch
from analysis_testutils import (
    QUAD_BATCHES,
    BNNet,
    Quadratic,
    TinyMLP,
    assert_unchanged,
    classification_batches,
    mse,
    quadratic_loss,
    quadratic_matrix,
    regression_batches,
    snapshot,
)
from torch import nn

from friendly_sam.analysis import worst_case_loss_increase


def full_loss(model, loss_fn, batches):
    n = sum(len(y) for _, y in batches)
    with torch.no_grad():
        return sum(float(loss_fn(model(x), y)) * len(y) / n for x, y in batches)


def full_grad(model, loss_fn, batches):
    n = sum(len(y) for _, y in batches)
    loss = sum(loss_fn(model(x), y) * len(y) / n for x, y in batches)
    return torch.autograd.grad(loss, list(model.parameters()))


def manual_increase(model, loss_fn, batches, eps):
    base = full_loss(model, loss_fn, batches)
    saved = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, e in zip(model.parameters(), eps, strict=True):
            p.add_(e)
    value = full_loss(model, loss_fn, batches)
    with torch.no_grad():  # (w + e) - e != w in floating point: copy back
        for p, w in zip(model.parameters(), saved, strict=True):
            p.copy_(w)
    return value - base


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_bounds_and_exact_restore(dtype, adaptive):
    model = TinyMLP(seed=0, dtype=dtype)
    batches, _, _ = regression_batches(dtype=dtype)
    rho = 0.5 if adaptive else 0.1
    snap = snapshot(model)
    res = worst_case_loss_increase(model, mse, batches, rho=rho, steps=5, adaptive=adaptive)
    assert_unchanged(model, snap)  # bit-identical weights, same storage
    assert all(p.grad is None for p in model.parameters())

    # the SAM / ASAM perturbation computed by hand
    g = full_grad(model, mse, batches)
    ws = [p.detach() for p in model.parameters()]
    if adaptive:
        n = math.sqrt(sum(float(((w * gi) ** 2).sum()) for w, gi in zip(ws, g, strict=True)))
        eps = [rho * w * w * gi / n for w, gi in zip(ws, g, strict=True)]
    else:
        n = math.sqrt(sum(float((gi**2).sum()) for gi in g))
        eps = [rho * gi / n for gi in g]
    sam = manual_increase(model, mse, batches, eps)
    assert_unchanged(model, snap)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert res.sam_increase == pytest.approx(sam, rel=1e-4 if dtype == torch.float32 else 1e-9, abs=tol)
    assert res.increase >= res.sam_increase
    assert res.increase >= 0.0
    assert res.increase == max(0.0, *res.history)
    assert res.worst_loss == pytest.approx(res.loss + res.increase)
    assert res.loss == pytest.approx(
        full_loss(model, mse, batches), rel=1e-12 if dtype == torch.float64 else 1e-6
    )
    assert res.forward_backward_passes == 5 and res.forward_passes == 1 and len(res.history) == 5
    assert json.loads(json.dumps(res.to_dict())) == res.to_dict()


def test_isotropic_quadratic_exact_maximum():
    # L(w) = |w|^2 / 2: the maximiser over |e| <= rho is e = rho w / |w| (the SAM direction),
    # and the maximal increase is rho |w| + rho^2 / 2.
    w0 = torch.tensor([3.0, -4.0, 0.0, 1.0], dtype=torch.float64)
    model = Quadratic(w0)
    loss_fn = quadratic_loss(torch.eye(4, dtype=torch.float64))
    rho = 0.3
    res = worst_case_loss_increase(model, loss_fn, QUAD_BATCHES, rho=rho, steps=4)
    exact = rho * float(w0.norm()) + rho**2 / 2
    assert res.sam_increase == pytest.approx(exact, rel=1e-12)
    assert res.increase == pytest.approx(exact, rel=1e-12)
    assert torch.equal(model.w.detach(), w0)


def test_anisotropic_quadratic_ascent_improves_on_sam():
    # For a convex quadratic the maximum lies on the sphere; more steps never do worse than SAM
    # and stay below the bound rho |g| + lambda_max rho^2 / 2.
    eigs = [20.0, 1.0, 0.5, 0.1]
    a = quadratic_matrix(eigs, seed=4)
    _, q = torch.linalg.eigh(a)  # ascending eigenvalues: q[:, -1] is the sharp direction
    # w0 almost orthogonal to the top eigenvector: the gradient A w0 barely sees the sharp
    # direction, so SAM's step misses most of the curvature
    w0 = q @ torch.tensor([1.0, -1.0, 1.0, 0.002], dtype=torch.float64)
    model = Quadratic(w0)
    loss_fn = quadratic_loss(a)
    rho = 0.5
    one = worst_case_loss_increase(model, loss_fn, QUAD_BATCHES, rho=rho, steps=1)
    many = worst_case_loss_increase(model, loss_fn, QUAD_BATCHES, rho=rho, steps=30)
    assert one.forward_backward_passes == 1 and one.forward_passes == 1
    assert one.increase == pytest.approx(one.sam_increase) or one.sam_increase < 0
    assert many.increase > one.increase * 1.05  # the curvature direction is found
    g_norm = float((a @ w0).norm())
    assert many.increase <= rho * g_norm + 20.0 * rho**2 / 2 + 1e-12
    # the exact maximum (trust-region subproblem): in the eigenbasis, the global maximiser is
    # e_i = c_i / (mu - lambda_i) with c = A w0 and mu > lambda_max chosen so that |e| = rho
    lam, q2 = torch.linalg.eigh(a)
    c = lam * (q2.T @ w0)
    lo, hi = float(lam[-1]), float(lam[-1]) + float(c.norm()) / rho + 1.0
    for _ in range(200):
        mu = (lo + hi) / 2
        lo, hi = (mu, hi) if float((c / (mu - lam)).norm()) > rho else (lo, mu)
    e = q2 @ (c / (hi - lam))
    best = float(0.5 * (w0 + e) @ a @ (w0 + e) - 0.5 * w0 @ a @ w0)
    assert many.increase <= best + 1e-9
    assert many.increase == pytest.approx(best, rel=1e-6)


def test_stationary_point_gives_zero():
    # at a minimum the gradient vanishes: no ascent direction, increase 0 (a known limitation
    # of gradient-based sharpness: it is a lower bound)
    model = Quadratic(torch.zeros(3, dtype=torch.float64))
    res = worst_case_loss_increase(
        model, quadratic_loss(torch.eye(3, dtype=torch.float64)), QUAD_BATCHES, 0.1
    )
    assert res.increase == 0.0 and res.history == [] and res.forward_backward_passes == 1


def test_batchnorm_model_and_progress():
    model = BNNet()
    model.train()
    batches = classification_batches()
    snap = snapshot(model)
    calls = []
    for bn_mode in ("eval", "batch"):
        res = worst_case_loss_increase(
            model,
            nn.CrossEntropyLoss(),
            batches,
            rho=0.05,
            steps=3,
            bn_mode=bn_mode,
            progress=lambda *a: calls.append(a),
        )
        assert res.increase >= max(0.0, res.sam_increase)
        assert model.training and all(m.training for m in model.modules())
        assert_unchanged(model, snap)
    assert [(d, t) for d, t, _ in calls[:4]] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_bad_arguments():
    model = TinyMLP()
    batches, _, _ = regression_batches()
    with pytest.raises(ValueError):
        worst_case_loss_increase(model, mse, batches, rho=0.0)
    with pytest.raises(ValueError):
        worst_case_loss_increase(model, mse, batches, rho=0.1, steps=0)
