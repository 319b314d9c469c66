"""The package's top-level names load on first use (PEP 562): ``import friendly_sam`` imports no torch, and
``from friendly_sam import FriendlySAM`` gives the very objects of ``friendly_sam.optim``."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from testkit import REPO

INIT = REPO / "src" / "friendly_sam" / "__init__.py"
NO_TORCH = "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), 'torch was imported'"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_the_package_and_its_version_loads_no_torch() -> None:
    out = _run(f"import sys, friendly_sam\nprint(friendly_sam.__version__)\n{NO_TORCH}\n")
    assert out.returncode == 0, out.stderr
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert version and out.stdout.strip() == version.group(1)


def test_the_top_level_names_are_the_optim_objects() -> None:
    import friendly_sam
    import friendly_sam.optim as optim

    names = [n for n in friendly_sam.__all__ if n != "__version__"]
    assert len(names) >= 4
    for name in names:
        assert getattr(friendly_sam, name) is getattr(optim, name), name
    assert set(friendly_sam.__all__) <= set(dir(friendly_sam))
    from friendly_sam import SAM, FriendlySAM  # noqa: F401 - the documented import form

    with pytest.raises(AttributeError, match="no attribute 'NotAName'"):
        friendly_sam.NotAName  # noqa: B018


def test_the_lazy_table_the_type_checking_imports_and_all_agree() -> None:
    """One list of names, three places: ``_LAZY_NAMES`` (run time), the ``TYPE_CHECKING`` imports (type
    checkers), ``__all__``; each table entry names a module that does define the name."""
    tree = ast.parse(INIT.read_text())
    type_checking = {
        (node.module, alias.name)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    import friendly_sam

    table = friendly_sam._LAZY_NAMES
    assert {(module.lstrip("."), name) for name, module in table.items()} == type_checking
    assert set(table) | {"__version__"} == set(friendly_sam.__all__)
