"""Friendly Sharpness-Aware Minimization (F-SAM; Li, Zhou, He, Cheng, Huang, CVPR 2024)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._tensor_ops import TensorOps
from .two_pass import TwoPassOptimizer, _Bucket, _check_number


class FriendlySAM(TwoPassOptimizer):
    r"""Friendly-SAM: perturb along the batch-specific noise of the gradient, not its full-batch part.

    The minibatch gradient is the full-batch gradient plus noise; perturbing along the full-gradient part
    hurts generalization. F-SAM estimates the full gradient by an exponential moving average ``m`` of
    past minibatch gradients and removes it from the perturbation direction. Per step, with ``g`` the
    raw minibatch gradient at ``w`` (before weight decay)::

        first step:  m = g ;  d = g                            (a plain SAM step)
        later:       d = g - sigma * m ;  m = lmbda * m + (1 - lmbda) * g
        e = rho * d / (||d|| + 1e-12)        adaptive:  e = rho * w^2 d / (||w d|| + 1e-12)
        w <- BaseStep(w, grad L_B(w + e))

    ``||.||`` is one global L2 norm over all parameters. This is the order of the official code (the
    direction uses ``m`` *before* the update), which produced the published results; the paper's
    equations update ``m`` first. For ``sigma = 1`` both give the same direction after normalisation
    (``g - m_new = lmbda (g - m_old)``); for other ``sigma`` they differ. ``sigma = 0`` is exactly SAM.
    Internally the EMA is updated as ``m <- (lmbda + (1 - lmbda) sigma) m + (1 - lmbda) d``, the same
    quantity written in terms of ``d`` so that ``g`` need not be kept (no extra buffer).

    Args:
        params: parameters or parameter-group dicts; a group may override ``rho``, ``sigma``, ``lmbda``
            and ``adaptive``.
        base_optimizer: the optimizer *class* that applies the update, e.g. ``torch.optim.SGD``.
        rho: neighbourhood radius, >= 0. Official recipe for CIFAR: 0.2 (class default 0.05).
        sigma: how much of the estimated full gradient to remove, >= 0 (1 = all; 0 = SAM).
        lmbda: EMA decay in [0, 1). Official recipe: 0.6 (was 0.95 before Oct 2024); class default 0.9.
        adaptive: ASAM's weight-scaled neighbourhood (use a larger ``rho``).
        max_grad_norm: if set, clip the perturbed gradient to this global norm before the base step.
        foreach: ``None`` (multi-tensor ops on accelerators, per-tensor on CPU), ``True`` or ``False``.
        **base_kwargs: arguments of the base optimizer (``lr``, ``momentum``, ``weight_decay``, ...).

    State: one EMA buffer per parameter (in ``state_dict()``) and one buffer holding the unperturbed
    weights between the two steps, beyond the base optimizer's own state.
    """

    _hyperparameters = {"rho": 0.05, "sigma": 1.0, "lmbda": 0.9, "adaptive": False}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        rho: float = 0.05,
        sigma: float = 1.0,
        lmbda: float = 0.9,
        adaptive: bool = False,
        *,
        max_grad_norm: float | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            base_optimizer,
            max_grad_norm=max_grad_norm,
            foreach=foreach,
            rho=rho,
            sigma=sigma,
            lmbda=lmbda,
            adaptive=adaptive,
            **base_kwargs,
        )

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        _check_number("rho" + where, group["rho"], low=0.0)
        _check_number("sigma" + where, group["sigma"], low=0.0)
        _check_number("lmbda" + where, group["lmbda"], low=0.0, high=1.0)
        if not isinstance(group["adaptive"], bool):
            raise ValueError(f"invalid adaptive={group['adaptive']!r}{where}: it must be True or False")

    def _split(self, bucket: _Bucket, directions: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Directions of parameters that already have an EMA, and the EMAs."""
        dirs, emas = [], []
        for p, d in zip(bucket.params, directions):
            ema = self.state[p].get("ema")
            if ema is not None:
                dirs.append(d)
                emas.append(ema)
        return dirs, emas

    def _direction_(self, bucket: _Bucket, ops: TensorOps, directions: list[Tensor]) -> None:
        dirs, emas = self._split(bucket, directions)
        if dirs and bucket.group["sigma"] != 0:
            ops.add_(dirs, emas, -bucket.group["sigma"])  # d = g - sigma * m

    def _update_state_(self, bucket: _Bucket, ops: TensorOps, directions: list[Tensor]) -> None:
        sigma, lmbda = bucket.group["sigma"], bucket.group["lmbda"]
        dirs, emas = self._split(bucket, directions)
        if dirs:
            decay = lmbda + (1.0 - lmbda) * sigma  # m_new = lmbda m + (1-lmbda)(d + sigma m)
            if decay != 1.0:
                ops.scale_(emas, decay)
            ops.add_(emas, dirs, 1.0 - lmbda)
        for p, d in zip(bucket.params, directions):
            if "ema" not in self.state[p]:
                self.state[p]["ema"] = d.clone(memory_format=torch.preserve_format)  # first step: m = g
