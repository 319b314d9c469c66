"""The runnable examples of docs/jax.md, verbatim, each in a fresh namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("optax", reason="JAX side not installed: pip install 'friendly-sam[jax]'")

DOC = Path(__file__).resolve().parents[2] / "docs" / "jax.md"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", re.S)
EXAMPLES = dict(EXAMPLE.findall(DOC.read_text()))


def test_the_page_has_its_three_examples() -> None:
    assert set(EXAMPLES) == {"jax-one-call", "jax-alternating", "jax-hand-written"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_doc_example_runs(name: str) -> None:
    exec(compile(EXAMPLES[name], f"{DOC.name}:{name}", "exec"), {"__name__": f"doc_{name.replace('-', '_')}"})
