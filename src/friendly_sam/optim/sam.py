"""SAM (Foret et al., ICLR 2021) and its adaptive form ASAM (Kwon et al., ICML 2021)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .tensor_ops import TensorOps
from .two_pass import Bucket, TwoPassOptimizer
from .validation import check_number


class SAM(TwoPassOptimizer):
    r"""Sharpness-Aware Minimization over any base optimizer.

    .. math::
        g = \nabla L_B(w), \qquad e = \rho \, \frac{g}{\lVert g \rVert_2 + 10^{-12}}, \qquad
        w \leftarrow \mathrm{BaseStep}\big(w, \nabla L_B(w + e)\big)

    With ``adaptive=True`` (ASAM) the neighbourhood is scaled by the weights:
    :math:`e = \rho \, w^2 g / (\lVert w g \rVert_2 + 10^{-12})`; ASAM wants a larger ``rho`` (e.g. 0.5-2).
    The norm is one global L2 norm over all parameters of all groups.

    Args:
        params: parameters or parameter-group dicts; a group may override ``rho`` and ``adaptive``.
        base_optimizer: the optimizer *class* that applies the update, e.g. ``torch.optim.SGD``.
        rho: neighbourhood radius (>= 0; 0 gives the base optimizer with a wasted second pass).
        adaptive: ASAM's weight-scaled neighbourhood.
        max_grad_norm: if set, clip the perturbed gradient to this global norm before the base step.
        foreach: ``None`` (multi-tensor ops on accelerators, per-tensor on CPU), ``True`` or ``False``.
        perturb_every: perturb only every k-th step (steps 0, k, 2k, ...); 1 (default) is SAM itself. On
            the other steps :meth:`first_step` takes the base step on the clean gradient and leaves
            :attr:`is_perturbed` False: skip the second pass, still call :meth:`second_step`
            (``docs/efficient.md``).
        between: what those other steps do: ``"base"`` (the clean gradient) or ``"looksam"`` (LookSAM,
            Liu et al., CVPR 2022: the clean gradient plus the last measured sharpness component, the part
            of the perturbed gradient orthogonal to its clean gradient, scaled to ``looksam_alpha * ||g||``;
            one extra parameter-sized buffer).
        looksam_alpha: LookSAM's weight of the reused component (>= 0, default 0.7).
        ascent_fraction: the share of the batch (in ``(0, 1]``, default 1: all of it) whose clean gradient
            builds the perturbation on perturbed steps (efficient F-SAM, ``docs/efficient.md``). The
            optimizer carries it as ``optimizer.ascent_fraction`` and does not slice batches itself: the step
            engine (``friendly_sam.train.training_step`` and the integrations over it) runs the clean pass of
            a perturbed step on the leading ``ceil(fraction * batch)`` samples; a hand-written loop slices
            its own clean pass. The base step always applies the whole batch's perturbed gradient.
        capturable: no host synchronisation in the step (``torch.compile(fullgraph=True)``, CUDA graphs):
            every decision on the device, and a step with an inf/nan gradient is skipped (counted in the device
            tensor ``skipped_steps``) instead of raising. See ``friendly_sam.optim.capturable`` and
            ``docs/optimizer.md``.
        **base_kwargs: arguments of the base optimizer (``lr``, ``momentum``, ``weight_decay``, ...),
            and the two distributed-training keywords of :class:`TwoPassOptimizer`: ``process_group``
            (the group the parameters are sharded over) and ``replica_group`` (the DDP replicas that
            agree on skipping an fp16 overflow); see ``docs/distributed.md``.

    Use ``first_step()`` / ``second_step()`` around your two forward/backward passes, or ``step(closure)``.
    With ``perturb_every > 1`` run the second pass only ``if opt.is_perturbed``.
    """

    HYPERPARAMETERS = ("rho", "adaptive")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        rho: float = 0.05,
        adaptive: bool = False,
        *,
        max_grad_norm: float | None = None,
        foreach: bool | None = None,
        perturb_every: int = 1,
        between: str = "base",
        looksam_alpha: float = 0.7,
        ascent_fraction: float = 1.0,
        capturable: bool = False,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            base_optimizer,
            max_grad_norm=max_grad_norm,
            foreach=foreach,
            perturb_every=perturb_every,
            between=between,
            looksam_alpha=looksam_alpha,
            ascent_fraction=ascent_fraction,
            capturable=capturable,
            rho=rho,
            adaptive=adaptive,
            **base_kwargs,
        )

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        check_number("rho", group["rho"], low=0.0, where=where)
        if not isinstance(group["adaptive"], bool):
            raise ValueError(f"invalid adaptive={group['adaptive']!r}{where}: it must be True or False")

    def _direction_(self, bucket: Bucket, ops: TensorOps, directions: list[Tensor]) -> None:
        pass  # SAM perturbs along the minibatch gradient itself

    def _update_state_(self, bucket: Bucket, ops: TensorOps, directions: list[Tensor], context: Any) -> None:
        pass  # SAM keeps no state of its own
