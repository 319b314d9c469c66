"""Report of the efficient-F-SAM benchmark (placeholder: replaced below)."""

from __future__ import annotations

from typing import Any


def write_report(args: Any, suite: dict[str, Any], specs: list[Any]) -> None:
    print("report: not yet")
