"""Shared pieces of the JAX tests: the golden problem's model, torch-equivalent optax bases, and the three
ways of running a two-pass step (opaque optimizer, alternating calls, hand-written two-gradient step)."""

from __future__ import annotations

import pytest

pytest.importorskip("optax", reason="JAX side not installed: pip install 'friendly-sam[jax]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from friendly_sam import jax as fsam_jax  # noqa: E402

ENTRIES = ("opaque", "alternating", "hand-written")


def mlp_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """The golden problem's model: ``tanh(x w1^T + b1) w2^T + b2``, mean cross-entropy."""
    hidden = jnp.tanh(x @ params["w1"].T + params["b1"])
    logits = hidden @ params["w2"].T + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def torch_like_base(
    name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, max_grad_norm: float | None = None
):
    """optax equivalents of ``torch.optim.SGD`` (coupled weight decay, momentum without dampening) and
    ``torch.optim.AdamW`` (defaults betas (0.9, 0.999), eps 1e-8, decoupled weight decay), after clipping
    the (perturbed) gradient to ``max_grad_norm`` as our torch optimizers do (``torch_clip_grad_norm``)."""
    if name == "SGD":
        base = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum or None))
    elif name == "AdamW":
        base = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    else:
        raise ValueError(name)
    return base if max_grad_norm is None else optax.chain(torch_clip_grad_norm(max_grad_norm), base)


def torch_clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``. (optax's
    ``clip_by_global_norm`` divides by the norm itself: the same up to that 1e-6.)"""

    def update_fn(updates, state, params=None):
        scale = jnp.minimum(1.0, max_norm / (fsam_jax.global_norm(updates) + 1e-6))
        return jax.tree.map(lambda g: g * scale, updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


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


# --------------------------------------------------------------------------- data-parallel problem
REPLICAS, LOCAL, DP_STEPS = 4, 3, 3
DP_HYPER = {"rho": 0.2, "sigma": 0.7, "lmbda": 0.6}  # sigma != 1: the EMA's ordering matters


def dp_problem(replicas: int = REPLICAS, seed: int = 0):
    """Float64 MLP parameters and ``DP_STEPS`` global batches split into ``replicas`` local batches."""
    rng = np.random.default_rng(seed)
    params = {
        "w1": rng.normal(size=(5, 4)) * 0.5,
        "b1": rng.normal(size=5) * 0.1,
        "w2": rng.normal(size=(3, 5)) * 0.5,
        "b2": np.zeros(3),
    }
    xs = rng.normal(size=(DP_STEPS, replicas, LOCAL, 4))
    ys = rng.integers(0, 3, size=(DP_STEPS, replicas, LOCAL))
    return jax.tree.map(jnp.asarray, params), jnp.asarray(xs), jnp.asarray(ys)


def dp_base():
    return torch_like_base("SGD", lr=0.1, momentum=0.9, weight_decay=1e-3)


def opaque_step(tx, loss=mlp_loss):
    """``step(params, state, x, y)`` of a two-pass optimizer in opaque mode (one update with grad_fn)."""
    grad = jax.grad(loss)

    def step(p, s, x, y):
        u, s = tx.update(grad(p, x, y), s, p, grad_fn=lambda q, _: grad(q, x, y))
        return optax.apply_updates(p, u), s

    return step


def run_mapped(mapper, mode: str, replicas: int = REPLICAS, opaque_mode: bool = True):
    """F-SAM with ``batch_axis_name`` under ``mapper`` (``jax.vmap``, ``jax.pmap``, or a shard_map wrapper
    of the same signature) over arguments stacked along a leading replica axis; (params, state)."""
    params, xs, ys = dp_problem(replicas)
    tx = fsam_jax.fsam(dp_base(), **DP_HYPER, batch_axis_name="batch", mode=mode, opaque_mode=opaque_mode)
    grad = jax.grad(mlp_loss)

    def alternating(p, s, x, y):
        for _ in range(2):
            u, s = tx.update(grad(p, x, y), s, p)
            p = optax.apply_updates(p, u)
        return p, s

    step = mapper(opaque_step(tx) if opaque_mode else alternating, axis_name="batch")
    step = step if mapper is jax.pmap else jax.jit(step)  # vmap, shard_map: compiled by jit
    p = jax.tree.map(lambda a: jnp.stack([a] * replicas), params)
    s = jax.vmap(tx.init)(p)
    for t in range(DP_STEPS):
        p, s = step(p, s, xs[t], ys[t])
    return p, s


def run_global_batch(replicas: int = REPLICAS, shard=None):
    """F-SAM in one program on the global batches (``shard``: a function placing each batch)."""
    params, xs, ys = dp_problem(replicas)
    tx = fsam_jax.fsam(dp_base(), **DP_HYPER)
    step = jax.jit(opaque_step(tx))
    state = tx.init(params)
    for t in range(DP_STEPS):
        x, y = xs[t].reshape(-1, 4), ys[t].reshape(-1)
        if shard is not None:
            x, y = shard(x), shard(y)
        params, state = step(params, state, x, y)
    return params, state
