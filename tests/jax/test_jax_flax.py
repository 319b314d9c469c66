"""flax nnx users: ``fsam`` inside ``nnx.Optimizer`` (``update(model, grads, grad_fn=...)``, jitted with
``nnx.jit``) takes the same steps as the pure-pytree loop."""

from __future__ import annotations

import pytest

pytest.importorskip("flax", reason="JAX side not installed: pip install 'friendly-sam[jax]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from friendly_sam.jax import fsam  # noqa: E402


class TinyMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden(x)))


def _loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def test_fsam_in_nnx_optimizer_equals_the_pure_loop() -> None:
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
    y = jnp.arange(6) % 3
    model = TinyMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, fsam(optax.sgd(0.1), rho=0.1, lmbda=0.6), wrt=nnx.Param)
    graphdef, _ = nnx.split(model)

    @nnx.jit
    def step(model, optimizer, x, y):
        grads = nnx.grad(_loss)(model, x, y)
        grad_fn = lambda params, _: jax.grad(lambda p: _loss(nnx.merge(graphdef, p), x, y))(params)  # noqa: E731
        optimizer.update(model, grads, grad_fn=grad_fn)

    graphdef_ref, params = nnx.split(TinyMLP(nnx.Rngs(0)))
    tx = fsam(optax.sgd(0.1), rho=0.1, lmbda=0.6)
    state = tx.init(params)
    loss_of = lambda p: _loss(nnx.merge(graphdef_ref, p), x, y)  # noqa: E731
    for _ in range(3):
        step(model, optimizer, x, y)
        u, state = tx.update(
            jax.grad(loss_of)(params), state, params, grad_fn=lambda q, _: jax.grad(loss_of)(q)
        )
        params = optax.apply_updates(params, u)
    got = nnx.state(model, nnx.Param)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        np.asarray(got["hidden"]["kernel"][...]),
        np.asarray(nnx.split(TinyMLP(nnx.Rngs(0)))[1]["hidden"]["kernel"][...]),
    )
