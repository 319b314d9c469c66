"""Training-step cost: SGD vs SAM vs F-SAM (``python -m benchmarks.cost.run``)."""
