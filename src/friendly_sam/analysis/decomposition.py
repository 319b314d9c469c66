"""The measures of the paper's gradient decomposition: true full-batch gradients and cosines.

F-SAM splits the minibatch gradient ``g`` into a full-batch component (estimated by an EMA ``m`` of past
minibatch gradients) and a stochastic-noise component ``g - sigma * m``. The functions here measure that
split; they change nothing (no weights, no optimizer state, no ``.grad``, no BatchNorm statistics). The
trainer's :class:`~friendly_sam.train.decomposition.DecompositionMonitor`, which *does* hand oracle full
gradients to the optimizer, uses them during training.

* :func:`full_batch_gradient`: the exact full-batch gradient over given batches (the example-weighted
  mean of the per-batch gradients).
* :func:`cosine`: the cosine between two gradients given as tensor lists.

**Which full gradient.** Minibatch gradients are taken in training mode: BatchNorm normalises with the
statistics of the batch. The full gradient they estimate is therefore the mean of *training-mode* per-batch
gradients, not the gradient of the eval-mode network (which uses running statistics and differs
systematically). :func:`full_batch_gradient` uses training-mode BatchNorm with per-batch statistics, the
running statistics untouched (:func:`~friendly_sam.optim.frozen_bn_stats`), and no gradients left in
``.grad``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..optim import frozen_bn_stats
from ._common import LossFn

__all__ = ["cosine", "full_batch_gradient"]


def full_batch_gradient(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    loss_fn: LossFn = nn.functional.cross_entropy,
    params: Sequence[Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    prepare: Callable[[Tensor], Tensor] | None = None,
) -> list[Tensor]:
    """The example-weighted mean of the per-batch gradients ``sum_b n_b / N * grad loss_b(w)``.

    The model runs in its current mode (for a training model: BatchNorm with batch statistics) with the
    BatchNorm running statistics frozen. ``loss_fn`` must be a batch mean. Nothing is written to ``.grad``.
    Parameters that get no gradient get zeros. ``autocast`` (a context-manager factory) wraps each forward,
    ``prepare`` maps each input (e.g. to channels_last). One batch gives exactly that batch's gradient.
    """
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    batches = list(batches)
    if not batches:
        raise ValueError("full_batch_gradient: no batches")
    total = sum(int(y.shape[0]) for _, y in batches)
    grads = [torch.zeros_like(p) for p in params]
    with frozen_bn_stats(model), torch.enable_grad():
        for x, y in batches:
            if prepare is not None:
                x = prepare(x)
            with autocast() if autocast is not None else contextlib.nullcontext():
                loss = loss_fn(model(x), y)
            weight = int(y.shape[0]) / total
            if weight != 1.0:
                loss = loss * weight
            for acc, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
                if g is not None:
                    acc.add_(g)
    return grads


def cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Cosine between two lists of tensors seen as one vector (float64 accumulation); 0 if one is 0."""
    dot = aa = bb = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = x.detach().double(), y.detach().double()
        dot += float((x * y).sum())
        aa += float((x * x).sum())
        bb += float((y * y).sum())
    denom = math.sqrt(aa * bb)
    return dot / denom if denom > 0 else 0.0
