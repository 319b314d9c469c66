"""Checks for a CUDA machine (``python -m benchmarks.gpu.step_cost_cuda``, ``benchmarks/gpu/run_all.sh``)."""
