"""Shared plumbing for the sharpness measures.

Conventions used by every measure in :mod:`friendly_sam.analysis`:

* ``batches`` is a fixed, finite sequence of ``(x, y)`` pairs. Together they define one objective

  .. math::  L(w) = \\sum_b \\frac{n_b}{N} \\, \\ell_b(w), \\qquad N = \\sum_b n_b,

  where ``ell_b = loss_fn(model(x_b), y_b)`` is assumed to be a *mean* over the ``n_b`` examples
  of batch ``b`` (as ``nn.CrossEntropyLoss()`` is by default), so ``L`` is the mean loss over all
  ``N`` examples whatever the batch sizes. ``n_b`` is the leading dimension of ``y`` (of ``x`` if
  ``y`` is a scalar). Tensors are moved to the device of the model's first parameter.
* The weights ``w`` are the parameters with ``requires_grad=True``, in ``model.parameters()``
  order; frozen parameters are constants.
* ``bn_mode`` chooses how normalisation layers behave (see :func:`evaluation_mode`).
* ``progress(done, total, message)`` is called after each unit of work (one HVP, one loss
  evaluation over all batches); ``None`` means silent.
* The model's ``.grad`` fields are never touched (all gradients go through ``torch.autograd.grad``),
  and weights are restored in place, bit for bit, before a measure returns or raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

Batch = tuple[Any, Any]
LossFn = Callable[[Any, Any], Tensor]
ProgressFn = Callable[[int, int, str], None]
BNMode = Literal["eval", "batch"]

__all__ = [
    "Batch",
    "BNMode",
    "LossFn",
    "ProgressFn",
    "evaluation_mode",
    "trainable_parameters",
]


class _Result:
    """Mixin: JSON-friendly ``to_dict`` for the result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _noop(done: int, total: int, message: str) -> None:
    pass


def _progress(progress: ProgressFn | None) -> ProgressFn:
    return _noop if progress is None else progress


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the measures differentiate / perturb: those with ``requires_grad``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameters with requires_grad=True")
    return params


def _check_batches(batches: Sequence[Batch]) -> list[Batch]:
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: pass a non-empty list of (x, y) pairs")
    return batches


def _batch_size(x: Any, y: Any) -> int:
    for t in (y, x):
        if isinstance(t, Tensor) and t.dim() >= 1:
            return int(t.shape[0])
        if isinstance(t, (list, tuple)) and t and isinstance(t[0], Tensor) and t[0].dim() >= 1:
            return int(t[0].shape[0])
    raise ValueError("cannot infer the batch size: neither x nor y is a tensor with a batch dimension")


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _prepared(batches: Sequence[Batch], device: torch.device) -> list[tuple[Any, Any, float]]:
    """(x, y, weight n_b / N) with tensors on ``device``."""
    batches = _check_batches(batches)
    sizes = [_batch_size(x, y) for x, y in batches]
    total = sum(sizes)
    if total <= 0:
        raise ValueError("the batches hold no examples")
    return [(_to(x, device), _to(y, device), n / total) for (x, y), n in zip(batches, sizes, strict=True)]


def _device(params: Sequence[Tensor]) -> torch.device:
    return params[0].device


def _measure_inputs(
    model: nn.Module, batches: Sequence[Batch], progress: ProgressFn | None
) -> tuple[ProgressFn, list[nn.Parameter], list[tuple[Any, Any, float]]]:
    """What every measure starts from: the progress callback (silent for ``None``), the trainable
    weights, and the batches weighted and moved to the weights' device (:func:`_prepared`)."""
    report = _progress(progress)
    params = trainable_parameters(model)
    return report, params, _prepared(batches, _device(params))


_BN_STATE = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, bn_mode: BNMode = "eval") -> Iterator[None]:
    """Put ``model`` in the mode used by the measures, and restore every module's mode afterwards.

    ``bn_mode="eval"`` (the default): the whole model is in eval mode, so BatchNorm uses its
    running statistics and dropout is off. The loss is then a deterministic function of the
    weights alone (it does not depend on how the examples are grouped into batches), which is
    what a Hessian, an eigenvalue or a loss landscape of "the trained network" should describe.

    ``bn_mode="batch"``: BatchNorm layers use the statistics of each batch, as in training (the
    loss of a batch then depends on the batch composition, and its Hessian includes the
    derivatives through the batch mean and variance), while every other module (dropout, ...)
    stays in eval mode. Running statistics are *not* changed: they are saved before and copied
    back in place afterwards.

    The ``training`` flag of every module is restored individually, so a model with, e.g.,
    frozen BatchNorm layers inside a training model comes back exactly as it was.
    """
    if bn_mode not in ("eval", "batch"):
        raise ValueError(f"bn_mode must be 'eval' or 'batch', not {bn_mode!r}")
    modes = [(m, m.training) for m in model.modules()]
    saved: list[tuple[Tensor, Tensor]] = []
    try:
        model.eval()
        if bn_mode == "batch":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    for name in _BN_STATE:
                        buf = getattr(m, name, None)
                        if isinstance(buf, Tensor):
                            saved.append((buf, buf.detach().clone()))
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)
        for m, training in modes:
            m.training = training


class _WeightGuard:
    """Saves the trainable weights and writes ``w0 + delta`` (or ``w0``) back in place.

    Never rebinds ``p.data``: anything holding a reference to a parameter (optimizers, EMA
    copies, FSDP views) keeps seeing the same storage.
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params = list(params)
        with torch.no_grad():
            self.origin = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def set_offset(self, delta: Sequence[Tensor | None]) -> None:
        for p, w0, d in zip(self.params, self.origin, delta, strict=True):
            p.copy_(w0)
            if d is not None:
                p.add_(d)

    @torch.no_grad()
    def restore(self) -> None:
        for p, w0 in zip(self.params, self.origin, strict=True):
            p.copy_(w0)


@contextlib.contextmanager
def _perturbation(model: nn.Module, params: Sequence[Tensor], bn_mode: BNMode) -> Iterator[_WeightGuard]:
    """A :class:`_WeightGuard` over ``params`` with ``model`` in :func:`evaluation_mode`: the weights
    are restored in place when the block ends, also on error (after the modes are)."""
    guard = _WeightGuard(params)
    try:
        with evaluation_mode(model, bn_mode):
            yield guard
    finally:
        guard.restore()


# ---------------------------------------------------------------------------------------------
# Vector helpers: a "vector" is a list of tensors shaped like the trainable parameters.


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return math.fsum(float(torch.sum(x.double() * y.double())) for x, y in zip(a, b, strict=True))


def _norm(a: Sequence[Tensor]) -> float:
    return math.sqrt(_dot(a, a))


def _randn_like(params: Sequence[Tensor], gen: torch.Generator) -> list[Tensor]:
    # drawn on the CPU so that a seed gives the same vectors on every device
    return [
        torch.randn(p.shape, generator=gen, dtype=torch.float64).to(device=p.device, dtype=p.dtype)
        for p in params
    ]


def _rademacher_like(params: Sequence[Tensor], gen: torch.Generator) -> list[Tensor]:
    return [
        (torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8) * 2 - 1).to(
            device=p.device, dtype=p.dtype
        )
        for p in params
    ]


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


# ---------------------------------------------------------------------------------------------
# Passes over the batches.


def _loss_and_grad(
    model: nn.Module, loss_fn: LossFn, data: Sequence[tuple[Any, Any, float]], params: Sequence[Tensor]
) -> tuple[float, list[Tensor]]:
    """L(w) and grad L(w): one forward + one backward per batch."""
    total = 0.0
    grad = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for x, y, weight in data:
            loss = loss_fn(model(x), y)
            gs = torch.autograd.grad(loss * weight, params, allow_unused=True)
            for acc, g in zip(grad, gs, strict=True):
                if g is not None:
                    acc.add_(g)
            total += float(loss.detach()) * weight
    return total, grad


def _correct(out: Any, y: Any) -> int | None:
    """Number of correct argmax predictions, or None when the outputs are not class logits."""
    if (
        isinstance(out, Tensor)
        and isinstance(y, Tensor)
        and out.dim() == 2
        and y.dim() == 1
        and out.shape[0] == y.shape[0]
        and not y.is_floating_point()
        and not y.is_complex()
    ):
        return int((out.argmax(dim=1) == y).sum())
    return None


@torch.no_grad()
def _loss_and_accuracy(
    model: nn.Module, loss_fn: LossFn, data: Sequence[tuple[Any, Any, float]]
) -> tuple[float, float | None]:
    """L(w) and the top-1 accuracy (None if the outputs are not logits): one forward per batch."""
    total = 0.0
    correct = 0
    count = 0
    have_acc = True
    for x, y, weight in data:
        out = model(x)
        total += float(loss_fn(out, y)) * weight
        if have_acc:
            c = _correct(out, y)
            if c is None:
                have_acc = False
            else:
                correct += c
                count += int(y.shape[0])
    return total, (correct / count if have_acc and count else None)
