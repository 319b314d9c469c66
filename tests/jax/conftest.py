"""JAX tests: each module starts with ``pytest.importorskip("optax", reason=...)``, so that where JAX is not
installed they are skipped with the reason and the fix (``pip install 'friendly-sam[jax]'``)."""

from __future__ import annotations

import pytest


@pytest.fixture
def x64():
    """float64 arrays inside the test (``jax_enable_x64``), switched back afterwards."""
    import jax

    with jax.enable_x64(True):
        yield
