"""The package's imports run one way, downward (docs: developers' guide, "Imports run one way").

Layers, bottom to top: ``optim``, ``data``, ``models``, ``jax``, ``reporting`` | ``analysis``, ``distributed`` |
``train`` | ``integrations``, ``commands`` | ``cli``. A module may import from its own package and from lower layers,
never from its layer's other packages or from above; no module imports a ``friendly_sam`` module inside a
function (the way a cycle is dodged). Read from the source with ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "friendly_sam"
LAYERS: dict[str, float] = {
    "files": -1,  # the file layer (friendly_sam.files): below everything, imports no package module
    "optim": 0,
    "data": 0,
    "models": 0,
    "jax": 0,  # the JAX side: imports nothing of the PyTorch side (tests/jax/test_jax_isolation.py)
    "reporting": 0,  # mean ± std, tables, figures: imports nothing of the package
    "analysis": 1,
    "distributed": 1,
    "train": 2,
    "integrations": 3,
    "commands": 3,
    "cli": 4,
    "__init__": 0.5,  # the package itself (``import friendly_sam``): above the bottom layer only
}


@dataclass(frozen=True)
class Edge:
    source: str  # file, relative to src/friendly_sam
    target: str  # imported module, dotted, absolute
    line: int
    in_function: bool


def _top_package(rel: Path) -> str:
    return rel.parts[0].removesuffix(".py")


def imports_of(path: Path, root: Path = SRC) -> list[Edge]:
    """Every ``friendly_sam`` import in one file, relative imports resolved."""
    rel = path.relative_to(root)
    package = ["friendly_sam", *rel.parts[:-1]]  # the package the module lives in
    edges: list[Edge] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("friendly_sam"):
                    edges.append(Edge(str(rel), target, child.lineno, in_function))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("friendly_sam"):
                        edges.append(Edge(str(rel), alias.name, child.lineno, in_function))
            visit(child, nested)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return edges


def all_edges() -> list[Edge]:
    return [e for path in sorted(SRC.rglob("*.py")) for e in imports_of(path)]


def violations(edges: list[Edge]) -> list[str]:
    bad = []
    for e in edges:
        source = _top_package(Path(e.source))
        parts = e.target.split(".")
        target = parts[1] if len(parts) > 1 else "__init__"
        if e.in_function:
            bad.append(f"{e.source}:{e.line} imports {e.target} inside a function")
        if source == target:
            continue
        if target not in LAYERS:
            bad.append(
                f"{e.source}:{e.line} imports {e.target}: package {target!r} has no layer in this test"
            )
        elif LAYERS[target] >= LAYERS.get(source, -1):
            bad.append(
                f"{e.source}:{e.line} imports {e.target}: {source} (layer {LAYERS.get(source)}) may only import "
                f"from lower layers, {target} is layer {LAYERS[target]}"
            )
    return bad


def test_every_package_has_a_layer() -> None:
    packages = {
        _top_package(p.relative_to(SRC))
        for p in SRC.glob("*")
        if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert packages - set(LAYERS) == set()


def test_imports_run_one_way() -> None:
    edges = all_edges()
    assert len(edges) > 30  # the parser sees the package's imports
    assert violations(edges) == []


@pytest.mark.parametrize(
    ("source", "code", "problem"),
    [
        ("distributed/x.py", "from ..train.step import training_step\n", "may only import from lower"),
        ("analysis/x.py", "from ..distributed import init_from_env\n", "may only import from lower"),
        ("train/x.py", "def f():\n    from ..data import subset\n", "inside a function"),
        ("commands/x.py", "from ..integrations import lightning\n", "may only import from lower"),
        ("optim/x.py", "import friendly_sam.data\n", "may only import from lower"),
    ],
)
def test_the_check_catches_upward_and_hidden_imports(
    tmp_path: Path, source: str, code: str, problem: str
) -> None:
    """The check itself can fail: a planted upward import, a same-layer import, a function-level import."""
    fake = tmp_path / "friendly_sam"
    (fake / source).parent.mkdir(parents=True)
    (fake / source).write_text(code)
    found = violations(imports_of(fake / source, root=fake))
    assert len(found) == 1 and problem in found[0], found


BENCHMARKS = SRC.parents[1] / "benchmarks"


def package_patches(path: Path) -> list[str]:
    """Assignments to (or ``setattr`` on) anything a file imported from ``friendly_sam``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("friendly_sam"):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {
                (a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("friendly_sam")
            }
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        targets = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        for t in targets:
            while isinstance(t, ast.Attribute):
                t = t.value
                if isinstance(t, ast.Name) and t.id in names:
                    found.append(f"{path.name}:{node.lineno} assigns to an attribute of {t.id}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Name) and first.id in names:
                found.append(f"{path.name}:{node.lineno} setattr on {first.id}")
    return found


def test_benchmarks_never_patch_the_package(tmp_path: Path) -> None:
    files = sorted(BENCHMARKS.rglob("*.py"))
    assert len(files) >= 8
    assert [p for f in files for p in package_patches(f)] == []
    planted = tmp_path / "bench.py"
    planted.write_text(
        "def worker():\n    from friendly_sam.train import trainer\n"
        "    trainer.build_optimizer = None\n    trainer.prepare_data, trainer.evaluate = 1, 2\n"
    )
    assert len(package_patches(planted)) == 3
