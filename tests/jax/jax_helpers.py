"""Shared pieces of the JAX tests: the golden problem's model, torch-equivalent optax bases, and the three
ways of running a two-pass step (opaque optimizer, alternating calls, hand-written two-gradient step)."""

from __future__ import annotations

import pytest

pytest.importorskip("optax", reason="JAX side not installed: pip install 'friendly-sam[jax]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from friendly_sam import jax as fsam_jax  # noqa: E402

ENTRIES = ("opaque", "alternating", "hand-written")


def mlp_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """The golden problem's model: ``tanh(x w1^T + b1) w2^T + b2``, mean cross-entropy."""
    hidden = jnp.tanh(x @ params["w1"].T + params["b1"])
    logits = hidden @ params["w2"].T + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def torch_like_base(name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
    """optax equivalents of ``torch.optim.SGD`` (coupled weight decay, momentum without dampening) and
    ``torch.optim.AdamW`` (defaults betas (0.9, 0.999), eps 1e-8, decoupled weight decay)."""
    if name == "SGD":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum or None))
    if name == "AdamW":
        return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    raise ValueError(name)


def perturbation_of(cls: str, opt_kw: dict):
    kw = dict(opt_kw)
    adaptive = kw.pop("adaptive", False)
    if cls == "SAM":
        return fsam_jax.sam_perturbation(kw["rho"], adaptive=adaptive)
    return fsam_jax.fsam_perturbation(
        kw["rho"], kw.get("sigma", 1.0), kw.get("lmbda", 0.9), adaptive=adaptive
    )


def optimizer_of(cls: str, opt_kw: dict, base, opaque_mode: bool):
    kw = dict(opt_kw)
    if cls == "SAM":
        return fsam_jax.sam(base, opaque_mode=opaque_mode, **kw)
    return fsam_jax.fsam(base, opaque_mode=opaque_mode, **kw)


def make_stepper(entry: str, cls: str, opt_kw: dict, base, loss=mlp_loss):
    """``(init(params) -> state, step(params, state, x, y) -> (params, state))`` for one entry point."""
    grad = jax.grad(loss)
    if entry == "hand-written":
        perturbation = perturbation_of(cls, opt_kw)

        def init(params):
            return perturbation.init(params), base.init(params)

        def step(params, state, x, y):
            e, p_state = perturbation.update(grad(params, x, y), state[0], params)
            g2 = grad(optax.apply_updates(params, e), x, y)
            updates, o_state = base.update(g2, state[1], params)
            return optax.apply_updates(params, updates), (p_state, o_state)

        return init, step
    tx = optimizer_of(cls, opt_kw, base, opaque_mode=entry == "opaque")
    if entry == "opaque":

        def step(params, state, x, y):
            g = grad(params, x, y)
            updates, state = tx.update(g, state, params, grad_fn=lambda p, _: grad(p, x, y))
            return optax.apply_updates(params, updates), state

        return tx.init, step

    def step(params, state, x, y):  # alternating: perturb, then update
        for _ in range(2):
            updates, state = tx.update(grad(params, x, y), state, params)
            params = optax.apply_updates(params, updates)
        return params, state

    return tx.init, step
