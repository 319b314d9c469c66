"""Code shape (developers' guide, issue 20): no function in ``src`` longer than 60 lines and no ``src`` file
longer than 450; benchmark scripts (one-off report builders) keep the looser 80-line function limit."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
BENCHMARKS = SRC.parent / "benchmarks"
MAX_LINES = 60
MAX_BENCHMARK_LINES = 80
MAX_FILE_LINES = 450


def long_functions(root: Path = SRC, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (n lines)`` for every function or method longer than ``limit`` lines, decorators and
    docstring included, anywhere under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - start + 1
                if length > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_longer_than_60_lines() -> None:
    assert long_functions() == []


def test_no_source_file_longer_than_450_lines() -> None:
    long_files = [
        f"{path.relative_to(SRC)} ({n} lines)"
        for path in sorted(SRC.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES
    ]
    assert long_files == []


def test_no_benchmark_function_longer_than_80_lines() -> None:
    assert long_functions(BENCHMARKS, MAX_BENCHMARK_LINES) == []


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    pass\n\n\n@staticmethod\ndef long():\n{body}")
    assert long_functions(tmp_path) == [f"m.py:6 long ({MAX_LINES + 2} lines)"]
