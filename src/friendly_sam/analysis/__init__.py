"""Sharpness measures for trained models, as plain library functions.

Every measure takes a model, a loss function ``loss_fn(outputs, targets)`` (a batch mean), a fixed
list of ``(x, y)`` batches and an optional ``progress(done, total, message)`` callback, and
returns a dataclass whose ``to_dict()`` is JSON-serialisable. The batches together define one
objective, the example-weighted mean loss ``L(w) = sum_b n_b/N * loss_b(w)``.

Cost, in passes over all the batches (F = forward, B = backward; an HVP is one forward and two
backward passes per batch, the second through the first's graph, measured at about 3x an F+B on CPU):

============================  ================================================  ===============
measure                       what                                              cost
============================  ================================================  ===============
``top_eigenvalue``            largest-magnitude Hessian eigenvalue (power it.)  <= iters HVPs
``hessian_trace``             Hutchinson trace estimate, Rademacher probes      samples HVPs
``worst_case_loss_increase``  max L(w+e)-L(w), ||e|| <= rho (projected ascent)  steps F+B + 1 F
``loss_landscape_1d``         L(w + a d), d filter-normalised                   points F
``loss_landscape_2d``         L(w + a d1 + b d2)                                points**2 F
============================  ================================================  ===============

By default the model is evaluated in eval mode (BatchNorm running statistics, no dropout), so the
loss is a deterministic function of the weights; ``bn_mode="batch"`` uses per-batch BatchNorm
statistics without touching the running statistics (:func:`evaluation_mode`). Module modes are
restored, weights are restored in place bit for bit, and ``.grad`` fields are never touched.

:mod:`~friendly_sam.analysis.decomposition` measures F-SAM's gradient decomposition (true full-batch
gradients, cosines; the trainer's ``DecompositionMonitor`` uses them). Everything here is a function of a
model and data that changes neither; ``fsam analyze RUN_DIR`` (:func:`friendly_sam.commands.analyze.analyze_run`) applies the measures
above to a trained run's checkpoint.
"""

from ._common import LossFn, evaluation_mode, trainable_parameters
from .decomposition import cosine, full_batch_gradient
from .hessian import EigenResult, TraceResult, hessian_trace, hessian_vector_product, top_eigenvalue
from .landscape import (
    Landscape1D,
    Landscape2D,
    filter_normalized_direction,
    loss_landscape_1d,
    loss_landscape_2d,
    plot_landscape_1d,
    plot_landscape_2d,
)
from .sharpness import SharpnessResult, worst_case_loss_increase

__all__ = [
    "EigenResult",
    "Landscape1D",
    "LossFn",
    "Landscape2D",
    "SharpnessResult",
    "TraceResult",
    "cosine",
    "evaluation_mode",
    "filter_normalized_direction",
    "full_batch_gradient",
    "hessian_trace",
    "hessian_vector_product",
    "loss_landscape_1d",
    "loss_landscape_2d",
    "plot_landscape_1d",
    "plot_landscape_2d",
    "top_eigenvalue",
    "trainable_parameters",
    "worst_case_loss_increase",
]
