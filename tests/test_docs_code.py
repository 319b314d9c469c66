"""Every Python example in README.md and docs/ runs, as written.

Each ```python block runs in a fresh namespace, in a temporary folder, seeded with the objects the guides
take as given (:func:`given`: a tiny model with BatchNorm, ``loss_fn``, a batch ``x, y``, a ``loader``,
``micro_batches``, an ``optimizer``/``opt``, ``RUN_DIR``); a placeholder such as ``model = ...`` ("your
model") keeps the given object. A block that cannot run here says why on the line above it, e.g.
``<!-- no-run: needs a CUDA GPU -->``; it is reported as a skip with that reason. A block marked
``<!-- own-process: WHY -->`` runs in a Python process of its own (it changes process-wide state, e.g.
dynamo's configuration, that later blocks must not inherit). A block marked
``<!-- example: NAME -->`` is run by its area's own test, in its framework (docs/integrations.md:
tests/integrations/test_docs_examples.py; docs/jax.md: tests/jax/test_jax_docs.py), which
:func:`test_named_examples_have_a_runner` checks.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from testkit import REPO
from torch import nn

BLOCK = re.compile(r"((?:<!--[^\n]*-->\n)*)```python\n(.*?)```", re.S)
NO_RUN = re.compile(r"<!-- no-run: (.+?) -->")
OWN_PROCESS = re.compile(r"<!-- own-process: (.+?) -->")
NAMED_EXAMPLE = re.compile(r"<!-- example: [\w-]+ -->")


@dataclass(frozen=True)
class Block:
    where: str  # file:line of the opening fence
    code: str
    no_run: str | None  # the reason a block cannot run here
    own_process: bool = False  # run in a fresh interpreter (the block changes process-wide state)


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def blocks() -> list[Block]:
    found = []
    for path in doc_files():
        text = path.read_text()
        for m in BLOCK.finditer(text):
            if NAMED_EXAMPLE.search(m.group(1)):
                continue  # run by its area's test (test_named_examples_have_a_runner)
            line = text.count("\n", 0, m.start() + len(m.group(1))) + 1
            reason, own = NO_RUN.search(m.group(1)), OWN_PROCESS.search(m.group(1)) is not None
            found.append(Block(f"{path.relative_to(REPO)}:{line}", m.group(2), reason and reason.group(1), own))
    return found


BLOCKS = blocks()


def given(tmp_path: Path) -> dict[str, Any]:
    """The objects the guides take as given, small enough to run in a moment on a CPU."""
    from friendly_sam import SAM, FriendlySAM, frozen_bn_stats

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(3)]
    optimizer = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    return {
        "torch": torch,
        "nn": nn,
        "SAM": SAM,
        "FriendlySAM": FriendlySAM,
        "frozen_bn_stats": frozen_bn_stats,
        "model": model,
        "loss_fn": nn.functional.cross_entropy,
        "x": batches[0][0],
        "y": batches[0][1],
        "loader": batches,
        "micro_batches": batches[:2],
        "optimizer": optimizer,
        "opt": optimizer,
        "epochs": 2,
        "RUN_DIR": tmp_path / "run",
    }


def without_placeholders(code: str, names: set[str]) -> ast.Module:
    """The block with ``name = ...`` removed where ``name`` is given (the reader's own object)."""
    tree = ast.parse(code)
    tree.body = [
        node
        for node in tree.body
        if not (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and node.value.value is Ellipsis
            and all(isinstance(t, ast.Name) and t.id in names for t in node.targets)
        )
    ]
    return tree


def test_the_docs_have_examples_and_every_skip_gives_a_reason():
    assert len(BLOCKS) >= 15
    assert sum(b.no_run is None for b in BLOCKS) >= 7
    assert all(b.no_run is None or len(b.no_run) > 8 for b in BLOCKS)


def test_named_examples_have_a_runner():
    """Every page with ``<!-- example: NAME -->`` blocks is read by a test that runs such blocks."""
    runners = [
        p.read_text() for p in (REPO / "tests").rglob("test_*.py") if "<!-- example: " in p.read_text()
    ]
    pages = [p for p in doc_files() if NAMED_EXAMPLE.search(p.read_text())]
    assert pages, "no named examples found: the pattern is stale"
    for page in pages:
        assert any(f'"{page.name}"' in text for text in runners), f"no test runs the examples of {page.name}"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_doc_example_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if block.no_run:
        pytest.skip(f"{block.where} not run here: {block.no_run}")
    if block.own_process:
        _run_in_own_process(block, tmp_path)
        return
    monkeypatch.chdir(tmp_path)
    run_block(block, tmp_path)


def run_block(block: Block, tmp_path: Path) -> None:
    namespace = given(tmp_path)
    tree = without_placeholders(block.code, set(namespace))
    exec(compile(tree, block.where, "exec"), {"__name__": "doc_example", **namespace})


def _run_in_own_process(block: Block, tmp_path: Path) -> None:
    program = (
        f"import sys; sys.path[:0] = {[str(REPO / 'tests'), str(REPO)]!r}\n"
        "from pathlib import Path\n"
        "import test_docs_code as docs\n"
        f"block = next(b for b in docs.BLOCKS if b.where == {block.where!r})\n"
        f"docs.run_block(block, Path({str(tmp_path)!r}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
