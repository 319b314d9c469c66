"""Run by test_jax_data_parallel.py with XLA_FLAGS=--xla_force_host_platform_device_count=2: F-SAM under
``pmap`` and ``shard_map`` in both modes, and under ``jit`` with each batch sharded over both devices;
saves the parameters (``argv[1]``, an .npz) for the test to compare with its single-device runs."""

from __future__ import annotations

import sys

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402
from jax_helpers import run_global_batch, run_mapped  # noqa: E402

DEVICES = 2


def shard_mapped(mesh: Mesh):
    """A ``mapper(f, axis_name)`` like ``jax.pmap``: ``f`` runs per device on its slice of stacked arguments."""

    def mapper(f, axis_name: str):
        def per_device(*args):
            out = f(*jax.tree.map(lambda a: a[0], args))  # this device's block has a leading 1
            return jax.tree.map(lambda a: a[None], out)

        spec = PartitionSpec(axis_name)
        return jax.shard_map(per_device, mesh=mesh, in_specs=spec, out_specs=spec)

    return mapper


def main(out: str) -> None:
    assert jax.device_count() == DEVICES, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    arrays = {}
    for mapper_name, mapper in (("pmap", jax.pmap), ("shard_map", shard_mapped(mesh))):
        for mode in ("per-replica", "synchronized"):
            params, _ = run_mapped(mapper, mode, replicas=DEVICES)
            arrays |= {f"{mapper_name}:{mode}/{k}": np.asarray(v) for k, v in params.items()}
    sharding = NamedSharding(mesh, PartitionSpec("batch"))

    def shard(a):
        a = jax.device_put(a, sharding)
        assert len(a.sharding.device_set) == DEVICES
        return a

    params, _ = run_global_batch(replicas=DEVICES, shard=shard)
    arrays |= {f"sharded-jit/{k}": np.asarray(v) for k, v in params.items()}
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
