"""On random problems and hyperparameters, the JAX optimizers (every entry point) follow the same float64
trajectory as this package's PyTorch ``FriendlySAM`` / ``SAM`` (SGD and AdamW bases, ASAM form, clipping
of the perturbed gradient: a clip first in the base chain)."""

from __future__ import annotations

import pytest

pytest.importorskip("optax", reason="JAX side not installed: pip install 'friendly-sam[jax]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from jax_helpers import ENTRIES, make_stepper, torch_like_base  # noqa: E402

from friendly_sam import SAM, FriendlySAM  # noqa: E402

SHAPES = [(3,), (2, 3), (4,)]


def _loss_torch(params: list[torch.Tensor], data: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return sum(((a * w * w).sum() + (b * torch.sin(3 * w)).sum()) for w, (a, b) in zip(params, data))


def _loss_jax(params: list[jax.Array], data: list[tuple[jax.Array, jax.Array]]) -> jax.Array:
    return sum(((a * w * w).sum() + (b * jnp.sin(3 * w)).sum()) for w, (a, b) in zip(params, data))


problems = st.fixed_dictionaries(
    {
        "cls": st.sampled_from(["FriendlySAM", "SAM"]),
        "entry": st.sampled_from(ENTRIES),
        "n_params": st.integers(1, 3),
        "steps": st.integers(1, 4),
        "seed": st.integers(0, 2**31 - 1),
        "rho": st.floats(0.0, 1.0),
        "sigma": st.floats(0.0, 2.0),
        "lmbda": st.floats(0.0, 0.99),
        "adaptive": st.booleans(),
        "base": st.sampled_from(["SGD", "AdamW"]),
        "lr": st.floats(1e-3, 0.3),
        "momentum": st.sampled_from([0.0, 0.9]),
        "weight_decay": st.sampled_from([0.0, 1e-2]),
        "max_grad_norm": st.sampled_from([None, 0.5]),
    }
)


@settings(max_examples=30, deadline=None)
@given(problems)
def test_jax_follows_the_torch_optimizer(p: dict) -> None:
    rng = np.random.default_rng(p["seed"])
    shapes = SHAPES[: p["n_params"]]
    init = [rng.normal(size=s) for s in shapes]
    # per step and tensor: a in [0.5, 1.5] (curvature), b ~ N(0, 1) (the minibatch's noise)
    data = [[(rng.uniform(0.5, 1.5, s), rng.normal(size=s)) for s in shapes] for _ in range(p["steps"])]
    opt_kw = {"rho": p["rho"], "adaptive": p["adaptive"]}
    if p["cls"] == "FriendlySAM":
        opt_kw |= {"sigma": p["sigma"], "lmbda": p["lmbda"]}
    base_kw = {"lr": p["lr"], "weight_decay": p["weight_decay"]}
    if p["base"] == "SGD":
        base_kw["momentum"] = p["momentum"]

    params_t = [torch.tensor(w, requires_grad=True) for w in init]
    cls = FriendlySAM if p["cls"] == "FriendlySAM" else SAM
    clip = p["max_grad_norm"]
    opt = cls(
        params_t, getattr(torch.optim, p["base"]), foreach=False, max_grad_norm=clip, **opt_kw, **base_kw
    )
    with jax.enable_x64(True):
        params_j = [jnp.asarray(w) for w in init]
        start, step = make_stepper(
            p["entry"],
            p["cls"],
            opt_kw,
            torch_like_base(p["base"], **base_kw, max_grad_norm=clip),
            loss=lambda w, d, _: _loss_jax(w, d),
        )
        state = start(params_j)
        for batch in data:
            batch_t = [(torch.tensor(a), torch.tensor(b)) for a, b in batch]
            _loss_torch(params_t, batch_t).backward()
            opt.first_step(zero_grad=True)
            _loss_torch(params_t, batch_t).backward()
            opt.second_step(zero_grad=True)
            params_j, state = step(
                params_j, state, [(jnp.asarray(a), jnp.asarray(b)) for a, b in batch], None
            )
            for wt, wj in zip(params_t, params_j):
                np.testing.assert_allclose(np.asarray(wj), wt.detach().numpy(), rtol=1e-9, atol=1e-12)
