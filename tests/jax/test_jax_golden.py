"""The JAX optimizers reproduce the official PyTorch SAM / ASAM / F-SAM trajectories
(tests/golden/fsam_trace.json, float64, SGD and AdamW bases) to 1e-10, through every entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("optax", reason="JAX side not installed: pip install 'friendly-sam[jax]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax_helpers import ENTRIES, make_stepper, torch_like_base  # noqa: E402

GOLDEN = Path(
    os.environ.get("FSAM_GOLDEN", Path(__file__).parents[2] / "tests" / "golden" / "fsam_trace.json")
)
TRACE = json.loads(GOLDEN.read_text())
PROBLEM = TRACE["problem"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", TRACE["cases"], ids=[c["name"] for c in TRACE["cases"]])
def test_reproduces_official_trajectory(case: dict, entry: str, x64) -> None:
    x = jnp.asarray(PROBLEM["X"], dtype=jnp.float64)
    y = jnp.asarray(PROBLEM["y"], dtype=jnp.int32)
    params = {n: jnp.asarray(PROBLEM["init"][n], dtype=jnp.float64) for n in PROBLEM["param_order"]}
    base = torch_like_base(case["base"], **case["base_kw"])
    init, step = make_stepper(entry, case["cls"], case["opt"], base)
    if entry == "opaque":  # compiled as users run it; the other two eagerly (a jit costs ~1 s each here)
        step = jax.jit(step)
    state = init(params)
    assert len(case["trajectory"]) == PROBLEM["steps"]
    for t, expected in enumerate(case["trajectory"]):
        rows = slice((4 * t) % 16, (4 * t) % 16 + 4)
        params, state = step(params, state, x[rows], y[rows])
        for n in PROBLEM["param_order"]:
            assert params[n].dtype == jnp.float64
            err = float(np.max(np.abs(np.asarray(params[n]) - np.asarray(expected[n]))))
            assert err < 1e-10, f"step {t}, {n}: max abs error {err:.3g}"
