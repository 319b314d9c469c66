"""Run by test_jax_data_parallel.py with XLA_FLAGS=--xla_force_host_platform_device_count=2: F-SAM under
``pmap`` in both modes, and under ``jit`` with each batch sharded over both devices; saves the parameters
(``argv[1]``, an .npz) for the test to compare with its single-device runs."""

from __future__ import annotations

import sys

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402
from jax_helpers import run_global_batch, run_mapped  # noqa: E402

DEVICES = 2


def main(out: str) -> None:
    assert jax.device_count() == DEVICES, jax.devices()
    arrays = {}
    for mode in ("per-replica", "synchronized"):
        params, _ = run_mapped(jax.pmap, mode, replicas=DEVICES)
        arrays |= {f"{mode}/{k}": np.asarray(v) for k, v in params.items()}
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))

    def shard(a):
        a = jax.device_put(a, sharding)
        assert len(a.sharding.device_set) == DEVICES
        return a

    params, _ = run_global_batch(replicas=DEVICES, shard=shard)
    arrays |= {f"sharded-jit/{k}": np.asarray(v) for k, v in params.items()}
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
