"""Efficient F-SAM variants: accuracy and speed (``python -m benchmarks.efficient.run``, ``.timing``)."""
