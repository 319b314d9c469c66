"""The work behind the ``fsam`` commands that build on the trainer: ``analyze``, ``compare``, ``demo``.

Each is a library function (:func:`~friendly_sam.commands.analyze.analyze_run`,
:func:`~friendly_sam.commands.compare.compare_runs`, :func:`~friendly_sam.commands.demo.run_demo`);
:mod:`friendly_sam.cli` only parses flags and prints."""

from .analyze import analyze_run
from .compare import compare_runs
from .demo import run_demo

__all__ = ["analyze_run", "compare_runs", "run_demo"]
