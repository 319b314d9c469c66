"""friendly-sam's benchmarks, a package run from the repository root: ``python -m benchmarks.<name>``
(e.g. ``python -m benchmarks.optimizer_step --quick``, ``python -m benchmarks.generalization.run --quick``).
The shared kit is :mod:`benchmarks.benchkit`; benchmarks/README.md lists them all."""
