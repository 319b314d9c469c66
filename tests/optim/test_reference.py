"""Property tests: the optimizers against a plain, obviously-correct reference written here."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from friendly_sam import SAM, FriendlySAM


def reference_run(params, grads_at, steps, groups_hp, lr, momentum):
    """Official-code F-SAM (sigma=None means SAM) with SGD+momentum, written out per tensor in float64.

    ``grads_at(step, pass_index, tensors)`` returns the gradient list at the given weights.
    ``groups_hp`` gives per-group (rho, sigma, lmbda, adaptive) and the group index of each tensor.
    """
    w = [p.detach().clone() for p in params]
    ema = [None] * len(w)
    buf = [None] * len(w)
    for t in range(steps):
        g = grads_at(t, 0, w)
        d = []
        for i, gi in enumerate(g):
            rho, sigma, lmbda, adaptive = groups_hp["hp"][groups_hp["of"][i]]
            if sigma is None:
                d.append(gi.clone())
            elif ema[i] is None:
                ema[i] = gi.clone()
                d.append(gi.clone())
            else:
                d.append(gi - sigma * ema[i])
                ema[i] = lmbda * ema[i] + (1 - lmbda) * gi
        weighted = []
        for i, di in enumerate(d):
            adaptive = groups_hp["hp"][groups_hp["of"][i]][3]
            weighted.append((w[i].abs() * di) if adaptive else di)
        norm = math.sqrt(sum(float((x * x).sum()) for x in weighted))
        perturbed = []
        for i, di in enumerate(d):
            rho, _, _, adaptive = groups_hp["hp"][groups_hp["of"][i]]
            e = rho * (w[i] ** 2 if adaptive else 1.0) * di / (norm + 1e-12)
            perturbed.append(w[i] + e)
        g2 = grads_at(t, 1, perturbed)
        for i in range(len(w)):
            buf[i] = g2[i].clone() if buf[i] is None else momentum * buf[i] + g2[i]
            w[i] = w[i] - lr * buf[i]
    return w


def quadratic_grads(targets, scales, noise):
    """Gradient of sum_i scale_i/2 ||w_i - target_i||^2 + a per-step, per-pass noise (a stochastic batch)."""

    def grads_at(step, pass_index, tensors):
        return [
            s * (x - c) + noise[step][pass_index][i]
            for i, (x, c, s) in enumerate(zip(tensors, targets, scales))
        ]

    return grads_at


shapes = st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(
    shapes=shapes,
    seed=st.integers(0, 2**16),
    rho=st.floats(0.0, 1.0),
    sigma=st.floats(0.0, 2.0),
    lmbda=st.floats(0.0, 0.99),
    adaptive=st.booleans(),
    two_groups=st.booleans(),
    use_sam=st.booleans(),
    foreach=st.booleans(),
)
def test_matches_reference(shapes, seed, rho, sigma, lmbda, adaptive, two_groups, use_sam, foreach):
    gen = torch.Generator().manual_seed(seed)
    steps, lr, momentum = 4, 0.1, 0.9
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    targets = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    scales = [float(torch.rand((), generator=gen, dtype=torch.float64)) + 0.1 for _ in shapes]
    noise = [
        [[0.3 * torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(2)]
        for _ in range(steps)
    ]
    grads_at = quadratic_grads(targets, scales, noise)
    # Second group (if any) overrides rho / lmbda / adaptive.
    split = len(shapes) // 2 if two_groups and len(shapes) > 1 else len(shapes)
    hp0 = (rho, None if use_sam else sigma, lmbda, adaptive)
    hp1 = (rho / 2, None if use_sam else sigma, lmbda / 2, not adaptive)
    expected = reference_run(
        init,
        grads_at,
        steps,
        {"hp": [hp0, hp1], "of": [0] * split + [1] * (len(shapes) - split)},
        lr,
        momentum,
    )

    params = [x.clone().requires_grad_(True) for x in init]
    groups = [{"params": params[:split]}]
    if split < len(shapes):
        extra = {"rho": rho / 2, "adaptive": not adaptive}
        if not use_sam:
            extra["lmbda"] = lmbda / 2
        groups.append({"params": params[split:], **extra})
    if use_sam:
        opt = SAM(
            groups, torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr, momentum=momentum, foreach=foreach
        )
    else:
        opt = FriendlySAM(
            groups,
            torch.optim.SGD,
            rho=rho,
            sigma=sigma,
            lmbda=lmbda,
            adaptive=adaptive,
            lr=lr,
            momentum=momentum,
            foreach=foreach,
        )
    for t in range(steps):
        for p, g in zip(params, grads_at(t, 0, [p.detach() for p in params])):
            p.grad = g.clone()
        opt.first_step()
        for p, g in zip(params, grads_at(t, 1, [p.detach() for p in params])):
            p.grad = g.clone()
        opt.second_step()
    for got, want in zip(params, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-9, atol=1e-9)
