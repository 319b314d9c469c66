"""Generalization suite: SGD vs SAM vs F-SAM on Fashion-MNIST (``python -m benchmarks.generalization.run``)."""
