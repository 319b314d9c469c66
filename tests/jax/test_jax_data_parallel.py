"""Data parallelism (``batch_axis_name``): the two perturbation modes of the PyTorch side, run as a named
``vmap`` (the same collectives as ``pmap``); ``pmap``, ``shard_map`` and a sharded ``jit`` run in a
subprocess with two host devices.

* synchronized: one process running F-SAM on the global batch, identical state on every replica;
* per-replica: each replica perturbs with its own gradient and EMA, the base step averages the perturbed
  gradients; the parameters stay bit-identical across replicas.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optax", reason="JAX side not installed: pip install 'friendly-sam[jax]'")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax_helpers import (  # noqa: E402
    DP_HYPER,
    DP_STEPS,
    REPLICAS,
    dp_base,
    dp_problem,
    mlp_loss,
    run_global_batch,
    run_mapped,
)

from friendly_sam.jax import friendly_state, fsam, fsam_perturbation  # noqa: E402


def _assert_same_on_every_replica(tree) -> None:
    for leaf in jax.tree.leaves(tree):
        assert np.array_equal(np.asarray(leaf), np.broadcast_to(np.asarray(leaf)[0], leaf.shape))


def _assert_close(a: dict, b: dict) -> None:
    for name in b:
        np.testing.assert_allclose(np.asarray(a[name]), np.asarray(b[name]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("opaque_mode", [True, False], ids=["opaque", "alternating"])
def test_synchronized_is_fsam_on_the_global_batch(x64, opaque_mode: bool) -> None:
    p, s = run_mapped(jax.vmap, "synchronized", opaque_mode=opaque_mode)
    _assert_same_on_every_replica(p)
    _assert_same_on_every_replica(friendly_state(s).ema)
    params, state = run_global_batch()  # equal local batch sizes: the mean of the local means
    _assert_close(jax.tree.map(lambda a: a[0], p), params)
    _assert_close(jax.tree.map(lambda a: a[0], friendly_state(s).ema), friendly_state(state).ema)


def test_per_replica_perturbs_each_replica_with_its_own_gradient_and_ema(x64) -> None:
    p, s = run_mapped(jax.vmap, "per-replica")
    _assert_same_on_every_replica(p)
    emas = np.asarray(friendly_state(s).ema["w1"])
    assert not np.allclose(emas[0], emas[1])  # one EMA per replica: of its own local gradients
    # the reference, written out: each replica's own perturbation, the mean of the perturbed gradients
    params, xs, ys = dp_problem()
    grad = jax.jit(jax.grad(mlp_loss))
    perturbations = [fsam_perturbation(**DP_HYPER) for _ in range(REPLICAS)]
    p_states = [pt.init(params) for pt in perturbations]
    base = dp_base()
    o_state = base.init(params)
    for t in range(DP_STEPS):
        perturbed = []
        for r in range(REPLICAS):
            e, p_states[r] = perturbations[r].update(grad(params, xs[t, r], ys[t, r]), p_states[r], params)
            perturbed.append(grad(optax.apply_updates(params, e), xs[t, r], ys[t, r]))
        mean = jax.tree.map(lambda *gs: sum(gs) / REPLICAS, *perturbed)
        u, o_state = base.update(mean, o_state, params)
        params = optax.apply_updates(params, u)
    _assert_close(jax.tree.map(lambda a: a[0], p), params)
    for r in range(REPLICAS):
        np.testing.assert_allclose(emas[r], np.asarray(friendly_state(p_states[r]).ema["w1"]), atol=1e-12)


def test_per_replica_with_alternating_calls_is_refused() -> None:
    with pytest.raises(ValueError, match="per-replica.*opaque_mode=True"):
        fsam(optax.sgd(0.1), batch_axis_name="batch", opaque_mode=False)
    with pytest.raises(ValueError, match="invalid mode='sync'"):
        fsam(optax.sgd(0.1), batch_axis_name="batch", mode="sync")


@pytest.mark.slow
def test_pmap_shard_map_and_sharded_jit_on_two_devices(tmp_path: Path, x64) -> None:
    """Under ``pmap`` and ``shard_map`` on two (host) devices both modes equal the named vmap, the replicas
    agree exactly;
    a ``jit`` over batches sharded on both devices equals the unsharded program."""
    out = tmp_path / "params.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    worker = Path(__file__).with_name("pmap_worker.py")
    run = subprocess.run(
        [sys.executable, str(worker), str(out)], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stdout + run.stderr
    got = np.load(out)
    for mode in ("per-replica", "synchronized"):
        by_vmap = run_mapped(jax.vmap, mode, replicas=2)[0]
        for mapper in ("pmap", "shard_map"):
            mapped = {k.split("/")[1]: got[k] for k in got.files if k.startswith(f"{mapper}:{mode}/")}
            assert set(mapped) == set(by_vmap), (mapper, mode)
            _assert_same_on_every_replica(mapped)
            _assert_close(mapped, by_vmap)
    sharded = {k.split("/")[1]: got[k] for k in got.files if k.startswith("sharded-jit/")}
    _assert_close(sharded, run_global_batch(replicas=2)[0])
