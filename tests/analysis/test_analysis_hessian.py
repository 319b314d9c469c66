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
    full_hessian,
    mse,
    quadratic_loss,
    quadratic_matrix,
    regression_batches,
    snapshot,
)
from torch import nn

from friendly_sam.analysis import (
    evaluation_mode,
    hessian_trace,
    hessian_vector_product,
    top_eigenvalue,
)

EIGS = [10.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.1, 0.0, 0.0, 0.0]


def quad_model(eigs=EIGS, seed=0):
    a = quadratic_matrix(eigs, seed)
    w0 = torch.linspace(-1, 1, len(eigs), dtype=torch.float64)
    return Quadratic(w0), quadratic_loss(a), a


# ------------------------------------------------------------------------ quadratic: exact values


def test_hvp_quadratic_is_matrix_product():
    model, loss_fn, a = quad_model()
    v = torch.randn(10, dtype=torch.float64)
    (hv,) = hessian_vector_product(model, loss_fn, QUAD_BATCHES, [v])
    torch.testing.assert_close(hv, a @ v, rtol=1e-12, atol=1e-12)


def test_top_eigenvalue_quadratic_default_tolerance():
    model, loss_fn, _ = quad_model()
    res = top_eigenvalue(model, loss_fn, QUAD_BATCHES)
    # Stopping rule: successive Rayleigh quotients within tol=1e-3 relative. With gap ratio
    # lambda2/lambda1 = 0.5 the quotient converges geometrically (factor 0.25 per HVP), so the
    # remaining error is below the last change: |lambda - 10| <= 1e-3 * 10.
    assert res.converged and res.hvps < 20
    assert abs(res.eigenvalue - 10.0) <= 1e-3 * 10.0
    # the residual is a rigorous bound on the distance to the nearest eigenvalue
    assert min(abs(res.eigenvalue - e) for e in EIGS) <= res.residual + 1e-12
    assert res.history[-1] == res.eigenvalue and len(res.history) == res.hvps


def test_top_eigenvalue_quadratic_tight():
    model, loss_fn, _ = quad_model()
    res = top_eigenvalue(model, loss_fn, QUAD_BATCHES, iters=200, tol=1e-14)
    assert res.eigenvalue == pytest.approx(10.0, rel=1e-12)
    assert res.residual < 1e-6


def test_trace_quadratic_diagonal_is_exact():
    # For a diagonal H, z^T H z = sum_i H_ii z_i^2 = tr H for every Rademacher z: zero variance.
    a = torch.diag(torch.tensor(EIGS, dtype=torch.float64))
    model = Quadratic(torch.ones(10, dtype=torch.float64))
    res = hessian_trace(model, quadratic_loss(a), QUAD_BATCHES, samples=5)
    assert res.trace == pytest.approx(sum(EIGS), abs=1e-12)
    assert res.std_error == pytest.approx(0.0, abs=1e-12)
    assert res.hvps == 5 and len(res.estimates) == 5


def test_trace_quadratic_dense():
    model, loss_fn, a = quad_model()
    n = 2000
    res = hessian_trace(model, loss_fn, QUAD_BATCHES, samples=n, seed=3)
    exact = float(torch.trace(a))
    assert exact == pytest.approx(sum(EIGS))
    # Var(z^T A z) = 2 sum_{i != j} A_ij^2 for Rademacher z; the reported standard error must
    # estimate sqrt(Var / n) (the sample std of 2000 draws is within ~10 % of the true one).
    offdiag = a - torch.diag(torch.diag(a))
    true_se = math.sqrt(2 * float((offdiag**2).sum()) / n)
    assert res.std_error == pytest.approx(true_se, rel=0.15)
    # The estimate is within 4 standard errors (a 6e-5 two-sided chance of failure for a normal
    # mean; deterministic anyway, given the seed).
    assert abs(res.trace - exact) <= 4 * true_se


# ------------------------------------------------------------------------ tiny MLP vs full Hessian


@pytest.fixture(scope="module")
def mlp_problem():
    model = TinyMLP(seed=0)
    batches, x, y = regression_batches()
    h = full_hessian(model, x, y)
    return model, batches, h


def test_full_hessian_sanity(mlp_problem):
    model, _, h = mlp_problem
    assert sum(p.numel() for p in model.parameters()) == 50
    assert h.shape == (50, 50)
    torch.testing.assert_close(h, h.T, rtol=0, atol=1e-12)


def test_hvp_matches_full_hessian_unequal_batches(mlp_problem):
    # batches of sizes 5, 11, 16: the weighting n_b / N must reproduce the Hessian of the mean
    # loss over all 32 examples
    model, batches, h = mlp_problem
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(50, generator=gen, dtype=torch.float64)
    parts = list(v.split([p.numel() for p in model.parameters()]))
    vec = [t.reshape(p.shape) for t, p in zip(parts, model.parameters(), strict=True)]
    hv = hessian_vector_product(model, mse, batches, vec)
    flat = torch.cat([t.reshape(-1) for t in hv])
    torch.testing.assert_close(flat, h @ v, rtol=1e-10, atol=1e-12)


def test_top_eigenvalue_matches_full_hessian(mlp_problem):
    model, batches, h = mlp_problem
    evals = torch.linalg.eigvalsh(h)
    order = evals.abs().argsort(descending=True)
    lam1, lam2 = float(evals[order[0]]), float(evals[order[1]])
    assert abs(lam2) / abs(lam1) < 0.95  # a gap, so that power iteration converges in this test
    snap = snapshot(model)
    res = top_eigenvalue(model, mse, batches, iters=1000, tol=1e-13)
    assert_unchanged(model, snap)
    assert res.converged
    assert res.eigenvalue == pytest.approx(lam1, rel=1e-6)


def test_trace_matches_full_hessian(mlp_problem):
    model, batches, h = mlp_problem
    exact = float(torch.trace(h))
    small = hessian_trace(model, mse, batches, samples=50, seed=0)
    assert abs(small.trace - exact) <= 4 * small.std_error
    # unbiased: with many samples the estimate is close (4 SE; the SE shrinks like 1/sqrt(n))
    big = hessian_trace(model, mse, batches, samples=800, seed=1)
    assert big.std_error < small.std_error / 2.5  # expected ratio sqrt(800 / 50) = 4
    assert abs(big.trace - exact) <= 4 * big.std_error


def test_trace_samples_are_exact_quadratic_forms(mlp_problem):
    # Each Hutchinson sample must be exactly z^T H z for the Rademacher probe z drawn from the
    # seed (so the mean is unbiased by construction: E[z z^T] = I).
    from friendly_sam.analysis._common import _generator, _rademacher_like

    model, batches, h = mlp_problem
    res = hessian_trace(model, mse, batches, samples=5, seed=11)
    gen = _generator(11)
    params = list(model.parameters())
    for est in res.estimates:
        z = torch.cat([t.reshape(-1) for t in _rademacher_like(params, gen)])
        assert set(z.tolist()) <= {-1.0, 1.0}
        assert est == pytest.approx(float(z @ h @ z), rel=1e-10, abs=1e-12)


def test_seed_reproducible_and_json(mlp_problem):
    model, batches, _ = mlp_problem
    r1 = top_eigenvalue(model, mse, batches, iters=5, tol=0.0, seed=7)
    r2 = top_eigenvalue(model, mse, batches, iters=5, tol=0.0, seed=7)
    assert r1 == r2 and r1.hvps == 5 and not r1.converged
    t = hessian_trace(model, mse, batches, samples=3, seed=7)
    for r in (r1, t):
        assert json.loads(json.dumps(r.to_dict())) == r.to_dict()


def test_progress_callback(mlp_problem):
    model, batches, _ = mlp_problem
    calls = []
    top_eigenvalue(model, mse, batches, iters=50, tol=1e-2, progress=lambda *a: calls.append(a))
    assert calls[-1][0] == calls[-1][1] == 50  # completes the bar on early convergence
    assert all(isinstance(m, str) for _, _, m in calls)
    calls.clear()
    hessian_trace(model, mse, batches, samples=4, progress=lambda *a: calls.append(a))
    assert [(d, t) for d, t, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_grad_fields_untouched_and_no_grad_context(mlp_problem):
    model, batches, _ = mlp_problem
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # the measures enable grad themselves
        res = top_eigenvalue(model, mse, batches, iters=3)
    assert math.isfinite(res.eigenvalue)
    assert all(p.grad is None for p in model.parameters())


def test_frozen_parameters_excluded():
    model = TinyMLP(seed=0)
    batches, x, y = regression_batches()
    h = full_hessian(model, x, y)
    model.fc1.requires_grad_(False)
    # the trainable block: fc2.weight, fc2.bias = the last 18 coordinates
    res = hessian_trace(model, mse, batches, samples=300, seed=0)
    exact = float(torch.trace(h[32:, 32:]))
    assert abs(res.trace - exact) <= 4 * res.std_error


def test_zero_hessian():
    model = Quadratic(torch.ones(3, dtype=torch.float64))
    res = top_eigenvalue(model, lambda out, y: out.sum(), QUAD_BATCHES)
    assert res.eigenvalue == 0.0 and res.converged and res.hvps == 1
    tr = hessian_trace(model, lambda out, y: out.sum(), QUAD_BATCHES, samples=2)
    assert tr.trace == 0.0


# ------------------------------------------------------------------------ BatchNorm / modes


def test_batchnorm_modes_and_restoration():
    model = BNNet()
    batches = classification_batches()
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    model.drop.eval()  # a mixed-mode model must come back exactly as it was
    modes = {n: m.training for n, m in model.named_modules()}
    snap = snapshot(model)
    ev = top_eigenvalue(model, loss_fn, batches, iters=8, tol=0)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert_unchanged(model, snap)
    bt = top_eigenvalue(model, loss_fn, batches, iters=8, tol=0, bn_mode="batch")
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert_unchanged(model, snap)  # running stats and num_batches_tracked untouched
    assert ev.bn_mode == "eval" and bt.bn_mode == "batch"
    assert ev.eigenvalue != pytest.approx(bt.eigenvalue, rel=1e-3)
    # eval mode is deterministic (dropout off): same numbers twice
    assert top_eigenvalue(model, loss_fn, batches, iters=8, tol=0) == ev


def test_evaluation_mode_batch_uses_batch_statistics():
    model = BNNet().eval()
    batches = classification_batches()
    x = batches[0][0]
    with evaluation_mode(model, "batch"):
        assert model.bn.training and not model.drop.training and not model.training
        out = model(x)
    model.bn.train()
    with torch.no_grad():
        ref = model.head(torch.relu(model.bn(model.conv(x))).flatten(1))
    model.eval()
    torch.testing.assert_close(out, ref)


def test_bad_arguments():
    model, loss_fn, _ = quad_model()
    with pytest.raises(ValueError):
        top_eigenvalue(model, loss_fn, [])
    with pytest.raises(ValueError):
        top_eigenvalue(model, loss_fn, QUAD_BATCHES, bn_mode="train")
    with pytest.raises(ValueError):
        hessian_trace(model, loss_fn, QUAD_BATCHES, samples=0)
