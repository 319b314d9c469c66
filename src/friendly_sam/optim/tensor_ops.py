"""The few list-of-tensor operations the two-pass optimizers need, in two interchangeable forms.

The algorithm is written once against this small interface; ``FOREACH`` runs each operation as one
multi-tensor ``torch._foreach_*`` call (few kernel launches, the fast path on accelerators) and
``PER_TENSOR`` runs the same operation tensor by tensor (the plain path, and the reference). On CPU
the two give bit-identical results because the foreach kernels fall back to the same per-tensor ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

TensorList = Sequence[Tensor]


def _copy_per_tensor(dst: TensorList, src: TensorList) -> None:
    if _compiling() and hasattr(torch, "_foreach_copy_") and not any(hasattr(d, "to_local") for d in dst):
        # Under torch.compile, inductor turns ``saved.copy_(w); w.add_(...)`` into a copy that aliases w and
        # is read after w is updated (the saved weights come out perturbed, torch 2.13): the multi-tensor
        # copy is traced as a real copy. Same values (a copy is exact).
        torch._foreach_copy_(dst, src)
        return
    for d, s in zip(dst, src):
        d.copy_(s)


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling()


def _copy_foreach(dst: TensorList, src: TensorList) -> None:
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:  # torch < 2.1 lacks a multi-tensor copy
        _copy_per_tensor(dst, src)


def _add_per_tensor(xs: TensorList, ys: TensorList, alpha: float) -> None:
    if _compiling() and not any(hasattr(x, "to_local") for x in xs):
        # A whole step compiled with its backward (trace_autograd_ops, torch 2.13): inductor drops the alpha
        # of ``w.grad.add_(m, alpha=-1)`` on a weight's gradient made in the graph; the multi-tensor add is
        # traced right. Same values.
        torch._foreach_add_(xs, ys, alpha=alpha)
        return
    for x, y in zip(xs, ys):
        x.add_(y, alpha=alpha)


def _add_foreach(xs: TensorList, ys: TensorList, alpha: float) -> None:
    torch._foreach_add_(xs, ys, alpha=alpha)


def _mul_per_tensor(xs: TensorList, ys: TensorList) -> None:
    for x, y in zip(xs, ys):
        x.mul_(y)


def _mul_foreach(xs: TensorList, ys: TensorList) -> None:
    torch._foreach_mul_(xs, ys)


def _scale_per_tensor(xs: TensorList, factor: float) -> None:
    for x in xs:
        x.mul_(factor)


def _scale_foreach(xs: TensorList, factor: float) -> None:
    torch._foreach_mul_(xs, factor)


def _addcmul_per_tensor(xs: TensorList, ys: TensorList, zs: TensorList, value: float) -> None:
    for x, y, z in zip(xs, ys, zs):
        x.addcmul_(y, z, value=value)


def _addcmul_foreach(xs: TensorList, ys: TensorList, zs: TensorList, value: float) -> None:
    torch._foreach_addcmul_(xs, ys, zs, value=value)


def _norms_per_tensor(xs: TensorList) -> list[Tensor]:
    return [torch.linalg.vector_norm(x) for x in xs]


def _norms_foreach(xs: TensorList) -> list[Tensor]:
    return list(torch._foreach_norm(xs))


@dataclass(frozen=True)
class TensorOps:
    """In-place operations on lists of tensors (``xs``, ``ys``, ``zs`` have matching shapes)."""

    name: str
    copy_: Callable[[TensorList, TensorList], None]  # dst <- src
    add_: Callable[[TensorList, TensorList, float], None]  # x <- x + alpha * y
    mul_: Callable[[TensorList, TensorList], None]  # x <- x * y
    scale_: Callable[[TensorList, float], None]  # x <- x * factor
    addcmul_: Callable[[TensorList, TensorList, TensorList, float], None]  # x <- x + value * y * z
    norms: Callable[[TensorList], list[Tensor]]  # [||x||_2 for x in xs]


PER_TENSOR = TensorOps(
    "per-tensor",
    _copy_per_tensor,
    _add_per_tensor,
    _mul_per_tensor,
    _scale_per_tensor,
    _addcmul_per_tensor,
    _norms_per_tensor,
)
FOREACH = TensorOps(
    "foreach", _copy_foreach, _add_foreach, _mul_foreach, _scale_foreach, _addcmul_foreach, _norms_foreach
)
