"""What every report shares: mean ± std over seeds, Markdown tables, and figures.

``fsam compare``, ``fsam demo``, ``fsam analyze`` (loss landscapes) and the benchmarks build their tables
and plots with these, so a number is summarised one way and a missing matplotlib is handled one way:
:func:`new_figure` raises :class:`PlottingUnavailable` naming what wanted the plot and how to install
matplotlib; a caller that can do without the plot catches it (``fsam demo`` writes its table anyway).

Figures use matplotlib's object API on an Agg canvas, never ``pyplot``: no global backend is changed in
the calling program, and figures need no closing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from .files import write_atomic

INSTALL_HINT = "pip install 'friendly-sam[plot]' (or pip install matplotlib)"


class PlottingUnavailable(ModuleNotFoundError):
    """matplotlib is not installed; the message names the plot and the install command."""


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    values = list(values)
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def finite(values: Iterable[Any]) -> list[float]:
    """The values that were measured: numbers that are finite (an epoch that skipped a split holds
    ``None``, older runs NaN)."""
    return [
        float(v)
        for v in values
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; ``align`` holds one character per column (``l``, ``r``; default left)."""
    marks = [{"r": "---:", "l": "---"}.get(a, "---") for a in align.ljust(len(header), "l")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plotting_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(what: str, figsize: tuple[float, float] = (6.0, 4.0), dpi: int = 120) -> Any:
    """A matplotlib ``Figure`` on an Agg canvas (add axes with ``fig.subplots(...)``).

    Raises:
        PlottingUnavailable: matplotlib is not installed; the message says ``what`` needs it.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlottingUnavailable(f"{what} needs matplotlib: {INSTALL_HINT}") from exc
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | PathLike[str]) -> Path:
    """Lay the figure out and write it (parent folders created) through the file layer: atomically, never
    through a link; PNG unless the name ends in .pdf or .svg. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    kind = path.suffix[1:].lower() if path.suffix.lower() in (".pdf", ".svg") else "png"
    write_atomic(path, lambda f: fig.savefig(f, format=kind))
    return path
