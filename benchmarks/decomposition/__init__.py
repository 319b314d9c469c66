"""The decomposition ablation (``python -m benchmarks.decomposition.run``)."""
