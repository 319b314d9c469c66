"""The pieces one by one: F-SAM's direction and EMA (the official ordering), the epsilon-safe normalisation
(plain and ASAM), argument checks, inf/nan handling, dtypes, and the state kept across steps."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("optax", reason="JAX side not installed: pip install 'friendly-sam[jax]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from friendly_sam.jax import (  # noqa: E402
    friendly_direction,
    friendly_state,
    fsam,
    fsam_perturbation,
    normalize,
    sam,
    sam_perturbation,
)


def _tree(*values):
    return {"a": jnp.asarray(values[:2], jnp.float32), "b": jnp.asarray([values[2:]], jnp.float32)}


def test_direction_follows_the_official_order() -> None:
    sigma, lmbda = 0.5, 0.8
    tx = friendly_direction(sigma, lmbda)
    g1, g2, g3 = _tree(1.0, 2.0, 3.0), _tree(-1.0, 0.5, 4.0), _tree(0.0, 1.0, -2.0)
    state = tx.init(g1)
    d, state = tx.update(g1, state)  # first step: plain SAM, m = g
    assert int(state.count) == 1
    jax.tree.map(np.testing.assert_array_equal, d, g1)
    jax.tree.map(np.testing.assert_array_equal, state.ema, g1)
    d, state = tx.update(g2, state)  # d uses m before its update
    jax.tree.map(lambda d_, g, m: np.testing.assert_allclose(d_, g - sigma * m, rtol=1e-6), d, g2, g1)
    m2 = jax.tree.map(lambda m, g: lmbda * m + (1 - lmbda) * g, g1, g2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), state.ema, m2)
    d, state = tx.update(g3, state)
    jax.tree.map(lambda d_, g, m: np.testing.assert_allclose(d_, g - sigma * m, rtol=1e-6), d, g3, m2)
    assert int(state.count) == 3


def test_sigma_zero_is_sam_and_the_ema_does_not_change_the_norm_floor() -> None:
    g = _tree(3.0, 0.0, 4.0)
    params = _tree(1.0, 1.0, 1.0)
    fsam_tx, sam_tx = fsam_perturbation(0.1, sigma=0.0), sam_perturbation(0.1)
    s_f, s_s = fsam_tx.init(params), sam_tx.init(params)
    for _ in range(3):
        e_f, s_f = fsam_tx.update(g, s_f, params)
        e_s, s_s = sam_tx.update(g, s_s, params)
        jax.tree.map(np.testing.assert_array_equal, e_f, e_s)
    assert math.isclose(float(optax.tree.norm(e_s)), 0.1, rel_tol=1e-6)


def test_a_zero_direction_gives_a_zero_perturbation_not_nan() -> None:
    zero = _tree(0.0, 0.0, 0.0)
    for tx in (normalize(), normalize(adaptive=True), sam_perturbation(0.05), fsam_perturbation(0.05)):
        e, _ = tx.update(zero, tx.init(zero), zero)
        assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(e))
    e, _ = optax.contrib.normalize().update(zero, optax.contrib.normalize().init(zero))  # optax's: nan
    assert np.isnan(np.asarray(e["a"])).all()


def test_adaptive_is_asam() -> None:
    d, w = _tree(1.0, -2.0, 0.5), _tree(2.0, 0.5, -3.0)
    tx = sam_perturbation(0.5, adaptive=True)
    e, _ = tx.update(d, tx.init(w), w)
    wd_norm = math.sqrt(
        sum(float(jnp.sum((a * b) ** 2)) for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(d)))
    )
    jax.tree.map(
        lambda e_, w_, d_: np.testing.assert_allclose(e_, 0.5 * w_**2 * d_ / wd_norm, rtol=1e-6), e, w, d
    )
    with pytest.raises(ValueError, match="needs the parameters"):
        normalize(adaptive=True).update(d, optax.EmptyState())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: friendly_direction(sigma=-1.0), "invalid sigma=-1.0"),
        (lambda: friendly_direction(lmbda=1.0), r"invalid lmbda=1.0: .* in \[0.0, 1.0\)"),
        (lambda: fsam(optax.sgd(0.1), rho=float("nan")), "invalid rho=nan"),
        (lambda: sam(optax.sgd(0.1), rho=True), "invalid rho=True"),
        (lambda: normalize(eps=-1e-12), "invalid eps"),
        (lambda: sam_perturbation(0.1, adaptive="yes"), "adaptive='yes'"),
    ],
)
def test_bad_hyperparameters_are_refused_with_their_name(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [sam, fsam])
def test_sam_and_fsam_share_their_keywords_and_refuse_unknown_ones(make) -> None:
    """``SharpnessAwareOptions``' keywords reach the perturbation and ``two_pass``; typos are refused."""
    name = make.__name__
    unknown = rf"{name}\(\) got unexpected keyword argument\(s\) \['adaptiv'\]; .*'adaptive'"
    with pytest.raises(TypeError, match=unknown):
        make(optax.sgd(0.1), adaptiv=True)
    with pytest.raises(ValueError, match="invalid mode='sync'"):
        make(optax.sgd(0.1), batch_axis_name="batch", mode="sync")
    with pytest.raises(ValueError, match="invalid eps"):
        make(optax.sgd(0.1), eps=-1.0)
    params, g = _tree(1.0, 2.0, 3.0), _tree(0.5, -1.0, 2.0)
    grad_fn = lambda p, _: jax.tree.map(lambda x: x * x, p)  # noqa: E731 - the gradient at other weights
    plain, adaptive = (make(optax.sgd(0.1), 0.1, adaptive=a) for a in (False, True))
    steps = [tx.update(g, tx.init(params), params, grad_fn=grad_fn)[0] for tx in (plain, adaptive)]
    assert not np.allclose(steps[0]["a"], steps[1]["a"])  # adaptive=True reached the perturbation
    alternating = make(optax.sgd(0.1), 0.1, opaque_mode=False)
    e = alternating.update(g, alternating.init(params), params)[0]  # the first call returns the ascent step
    norm = math.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(e)))
    assert norm == pytest.approx(0.1, rel=1e-5)  # opaque_mode=False reached two_pass


def test_a_non_finite_gradient_leaves_the_ema_alone() -> None:
    tx = friendly_direction(1.0, 0.6)
    g1, g2 = _tree(1.0, 2.0, 3.0), _tree(2.0, 1.0, 0.0)
    clean = tx.update(g2, tx.update(g1, tx.init(g1))[1])
    state = tx.update(g1, tx.init(g1))[1]
    d, state = tx.update(_tree(float("nan"), 1.0, 1.0), state)
    assert np.isnan(np.asarray(d["a"])).any() and int(state.count) == 1  # the step shows it; state kept
    d, state = tx.update(g2, state)
    jax.tree.map(np.testing.assert_array_equal, (d, state), clean)


def test_apply_if_finite_skips_the_whole_step_and_keeps_the_ema() -> None:
    params = _tree(1.0, 2.0, 3.0)
    loss = lambda p, scale: scale * sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(p))  # noqa: E731
    tx = optax.apply_if_finite(fsam(optax.sgd(0.1), rho=0.1, sigma=1.0, lmbda=0.6), max_consecutive_errors=3)
    state = tx.init(params)
    step = jax.jit(
        lambda p, s, c: tx.update(jax.grad(loss)(p, c), s, p, grad_fn=lambda q, _: jax.grad(loss)(q, c))
    )
    u, state = step(params, state, 1.0)
    params = optax.apply_updates(params, u)
    ema = friendly_state(state).ema
    u, state = step(params, state, jnp.inf)  # the clean gradient holds inf/nan
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u)) and int(state.notfinite_count) == 1
    jax.tree.map(np.testing.assert_array_equal, friendly_state(state).ema, ema)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_low_precision_leaves_keep_their_dtype_and_norm_in_float32(dtype) -> None:
    g = {"a": jnp.full((1000,), 300.0, dtype)}  # sum of squares 9e7 overflows fp16 (max 65504)
    tx = fsam_perturbation(0.1)
    e, state = jax.jit(tx.update)(g, tx.init(g), g)
    assert e["a"].dtype == dtype and friendly_state(state).ema["a"].dtype == dtype
    assert math.isclose(float(jnp.linalg.norm(e["a"].astype(jnp.float32))), 0.1, rel_tol=1e-2)


def test_friendly_state_finds_the_ema_or_says_it_is_missing() -> None:
    params = _tree(1.0, 2.0, 3.0)
    state = fsam(optax.adamw(1e-3)).init(params)
    assert int(friendly_state(state).count) == 0
    with pytest.raises(ValueError, match="found 0"):
        friendly_state(sam(optax.sgd(0.1)).init(params))


def test_optax_contrib_sam_default_reset_state_would_make_fsam_plain_sam() -> None:
    """Why fsam() passes reset_state=False: optax.contrib.sam's default resets the adversary's state (the
    EMA) after every step, so F-SAM's adversary inside it silently degenerates to SAM."""
    params = _tree(0.5, -1.0, 2.0)
    loss = lambda p, c: jnp.sum(jnp.sin(c * p["a"])) + jnp.sum(p["b"] ** 2 * c)  # noqa: E731
    adversary = optax.chain(fsam_perturbation(0.2, 1.0, 0.6), optax.scale(-1.0))
    ours = fsam(optax.sgd(0.1), 0.2, 1.0, 0.6)
    reset = optax.contrib.sam(optax.sgd(0.1), adversary, opaque_mode=True)  # reset_state=True
    plain_sam = sam(optax.sgd(0.1), 0.2)
    finals = []
    for tx in (ours, reset, plain_sam):
        p, s = params, tx.init(params)
        for c in (1.0, 2.0, 0.5):
            u, s = tx.update(jax.grad(loss)(p, c), s, p, grad_fn=lambda q, _, c=c: jax.grad(loss)(q, c))
            p = optax.apply_updates(p, u)
        finals.append(p)
    jax.tree.map(np.testing.assert_array_equal, finals[1], finals[2])  # reset: exactly SAM
    assert not np.allclose(np.asarray(finals[0]["a"]), np.asarray(finals[2]["a"]))
