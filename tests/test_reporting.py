"""friendly_sam.reporting: the one place reports summarise numbers and draw figures."""

from __future__ import annotations

import math
import sys

import pytest

from friendly_sam import reporting
from friendly_sam.commands.demo_report import plot_demo


def test_mean_std_and_finite():
    assert reporting.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample standard deviation
    assert reporting.mean_std([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in reporting.mean_std([]))
    assert reporting.finite([1, None, float("nan"), 2.5, float("inf"), True, "3"]) == [1.0, 2.5]


def test_markdown_table():
    table = reporting.markdown_table(["run", "acc"], [["sgd", "90.1"], ["fsam", "91.0"]], align="lr")
    assert table.splitlines() == ["| run | acc |", "|---|---:|", "| sgd | 90.1 |", "| fsam | 91.0 |"]


def test_a_figure_is_saved_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    fig = reporting.new_figure("a test plot")
    fig.subplots().plot([0, 1], [1, 0])
    path = reporting.save_figure(fig, tmp_path / "sub" / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_is_one_clear_error_or_a_skipped_plot(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.delitem(sys.modules, "matplotlib.figure", raising=False)
    monkeypatch.delitem(sys.modules, "matplotlib.backends.backend_agg", raising=False)
    with pytest.raises(reporting.PlottingUnavailable, match=r"fsam compare --plot needs matplotlib: pip"):
        reporting.new_figure("fsam compare --plot")
    assert not reporting.plotting_available()
    summary = {"setting": {"label_noise": 0.0}, "runs": {}}
    assert plot_demo(summary, {}, tmp_path / "demo.png") is None  # the demo writes its table anyway
    assert not (tmp_path / "demo.png").exists()
