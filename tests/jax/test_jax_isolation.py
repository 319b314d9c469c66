"""The two sides stay apart: the PyTorch package never imports JAX, and ``friendly_sam.jax`` imports nothing
of torch or of the PyTorch side; without JAX, importing it says what to install."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "friendly_sam"
JAX_WORLD = ("jax", "jaxlib", "optax", "flax", "friendly_sam.jax")


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                package = ["friendly_sam", *path.relative_to(SRC).parts[:-1]]
                base = package[: len(package) - (node.level - 1)]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module or "")
    return names


def _is_within(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def test_no_torch_side_module_imports_jax() -> None:
    torch_side = [p for p in SRC.rglob("*.py") if "jax" not in p.relative_to(SRC).parts]
    assert len(torch_side) > 30
    bad = {
        str(p.relative_to(SRC)): sorted(n for n in _imported_modules(p) if _is_within(n, JAX_WORLD))
        for p in torch_side
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_jax_package_imports_no_torch_and_nothing_of_the_torch_side() -> None:
    files = sorted((SRC / "jax").rglob("*.py"))
    assert len(files) >= 3
    bad = {
        str(p.relative_to(SRC)): sorted(
            n
            for n in _imported_modules(p)
            if _is_within(n, ("torch",))
            or (_is_within(n, ("friendly_sam",)) and not _is_within(n, ("friendly_sam.jax",)))
        )
        for p in files
    }
    assert {k: v for k, v in bad.items() if v} == {}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_the_torch_package_loads_no_jax() -> None:
    out = _run(
        "import sys\n"
        "import friendly_sam, friendly_sam.optim, friendly_sam.data, friendly_sam.train, friendly_sam.cli\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {('jax', 'jaxlib', 'optax', 'flax')!r}"
        " or m.startswith('friendly_sam.jax')))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_the_jax_package_loads_no_torch() -> None:
    """A JAX-only user needs no torch at run time: the package's top-level names are lazy (PEP 562)."""
    pytest.importorskip("optax", reason="needs JAX and optax: pip install 'friendly-sam[jax]'")
    out = _run(
        "import friendly_sam.jax, sys\n"
        "from friendly_sam.jax import fsam, sam\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), "
        "sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:5]\n"
    )
    assert out.returncode == 0, out.stderr


def test_without_jax_the_import_says_what_to_install() -> None:
    out = _run(
        "import sys\n"
        "sys.modules['jax'] = None  # as if JAX were not installed\n"
        "try:\n"
        "    import friendly_sam.jax\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "pip install 'friendly-sam[jax]'" in out.stdout
