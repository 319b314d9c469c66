"""Friendly Sharpness-Aware Minimization (F-SAM; Li, Zhou, He, Cheng, Huang, CVPR 2024)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import functional as F
from .research import COMPONENTS, FSAMResearch
from .tensor_ops import TensorOps
from .two_pass import Bucket, TwoPassOptimizer
from .validation import check_number

__all__ = ["COMPONENTS", "FriendlySAM"]


class FriendlySAM(FSAMResearch, TwoPassOptimizer):
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

    **Perturbation components** (the paper's ablation; per parameter group, ``component=``):

    ==============  ======================  =================================================
    ``component``   direction ``d``         meaning
    ==============  ======================  =================================================
    ``"noise"``     ``g - sigma * m``       F-SAM (default): the stochastic-noise component
    ``"full"``      ``m``                   the estimated full-gradient component only
    ``"minibatch"`` ``g``                   SAM: the whole minibatch gradient
    ==============  ======================  =================================================

    The EMA is kept up to date in every mode (``m <- lmbda m + (1 - lmbda) g``), and the first step is a
    plain SAM step (``d = g``) in every mode, since no estimate exists yet. ``"full"`` keeps one extra
    parameter-sized buffer (a copy of ``g``, needed for the EMA update once ``d`` has replaced it).

    **Oracle full gradient**: :meth:`set_full_gradient` hands the optimizer the true full-batch gradient
    (computed by the caller, e.g. every N steps over the whole training set); until
    :meth:`clear_full_gradient`, the direction uses it in place of the EMA as ``m`` (the EMA itself is still
    updated from ``g``, so it can be compared with the oracle). It is part of ``state_dict()``.

    **Diagnostics** (``track_diagnostics=True``, off by default): each step with an estimate ``m`` (the EMA,
    or the oracle when set), the optimizer records ``cos(g, m)`` and ``||g - sigma m|| / ||sigma m||``
    (noise-to-full norm ratio; with per-group ``sigma``, each group's own) from the tensors it already
    holds: one dot product and two norms per tensor, no extra pass (computed apart from the update, by
    :class:`~friendly_sam.optim.diagnostics.DirectionDiagnostics`). :meth:`read_diagnostics` returns their
    means since the last read. Under parameter sharding (``process_group``) they cover the local shard only.

    Args:
        params: parameters or parameter-group dicts; a group may override ``rho``, ``sigma``, ``lmbda``,
            ``adaptive`` and ``component``.
        base_optimizer: the optimizer *class* that applies the update, e.g. ``torch.optim.SGD``.
        rho: neighbourhood radius, >= 0. Official recipe for CIFAR: 0.2 (class default 0.05).
        sigma: how much of the estimated full gradient to remove, >= 0 (1 = all; 0 = SAM).
        lmbda: EMA decay in [0, 1). Official recipe: 0.6 (was 0.95 before Oct 2024); class default 0.9.
        adaptive: ASAM's weight-scaled neighbourhood (use a larger ``rho``).
        component: ``"noise"`` (F-SAM, default), ``"full"`` or ``"minibatch"`` (see above).
        max_grad_norm: if set, clip the perturbed gradient to this global norm before the base step.
        foreach: ``None`` (multi-tensor ops on accelerators, per-tensor on CPU), ``True`` or ``False``.
        perturb_every: perturb only every k-th step (steps 0, k, 2k, ...); 1 (default) is F-SAM itself.
            On the other steps :meth:`first_step` takes the base step on the clean gradient and leaves
            :attr:`is_perturbed` False: skip the second pass, still call :meth:`second_step`.
        between: what those other steps do: ``"base"`` (the clean gradient) or ``"looksam"`` (the clean
            gradient plus the part of the last perturbed gradient orthogonal to its clean gradient, scaled
            to ``looksam_alpha * ||g||``; LookSAM, Liu et al., CVPR 2022; one extra parameter-sized buffer).
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
        track_diagnostics: record ``cos(g, m)`` and the noise/full norm ratio (see above).
        **base_kwargs: arguments of the base optimizer (``lr``, ``momentum``, ``weight_decay``, ...),
            and the two distributed-training keywords of :class:`TwoPassOptimizer`: ``process_group``
            (the group the parameters are sharded over) and ``replica_group`` (the DDP replicas that
            agree on skipping an fp16 overflow); see ``docs/distributed.md``.

    **What m averages with** ``perturb_every > 1``: every clean minibatch gradient, unperturbed steps
    included (each step has one, so ``m <- lmbda m + (1 - lmbda) g`` runs on every step; ``lmbda`` keeps its
    per-step meaning). With sub-batch ascent (``training_step(ascent_fraction=f)``) the clean gradient of a
    perturbed step is that of the sub-batch, so m averages sub-batch gradients there (and whole-batch ones
    on unperturbed steps). See ``docs/efficient.md``.

    State: one EMA buffer per parameter (in ``state_dict()``) and one buffer holding the unperturbed
    weights between the two steps, beyond the base optimizer's own state.
    """

    HYPERPARAMETERS = ("rho", "sigma", "lmbda", "adaptive", "component")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        rho: float = 0.05,
        sigma: float = 1.0,
        lmbda: float = 0.9,
        adaptive: bool = False,
        component: str = "noise",
        *,
        max_grad_norm: float | None = None,
        foreach: bool | None = None,
        perturb_every: int = 1,
        between: str = "base",
        looksam_alpha: float = 0.7,
        ascent_fraction: float = 1.0,
        capturable: bool = False,
        track_diagnostics: bool = False,
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
            sigma=sigma,
            lmbda=lmbda,
            adaptive=adaptive,
            component=component,
            **base_kwargs,
        )
        if capturable and track_diagnostics:
            raise ValueError(
                "FriendlySAM(capturable=True) does not support track_diagnostics (they sync to read)"
            )
        self._init_research(track_diagnostics)

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        check_number("rho", group["rho"], low=0.0, where=where)
        check_number("sigma", group["sigma"], low=0.0, where=where)
        check_number("lmbda", group["lmbda"], low=0.0, high=1.0, where=where)
        if not isinstance(group["adaptive"], bool):
            raise ValueError(f"invalid adaptive={group['adaptive']!r}{where}: it must be True or False")
        if group["component"] == "full" and getattr(self, "capturable", False):
            raise ValueError(
                f"component='full'{where} is not supported with capturable=True (a research option)"
            )
        if group["component"] not in COMPONENTS:
            raise ValueError(
                f"invalid component={group['component']!r}{where}: use 'noise' (F-SAM: g - sigma*m), "
                "'full' (m only) or 'minibatch' (g: SAM)"
            )

    # ----------------------------------------------------------------- direction and state
    def _estimates(self, bucket: Bucket, directions: list[Tensor]) -> _Estimates:
        """Split the bucket: parameters with a full-gradient estimate (the oracle, else the EMA) and their
        directions and estimates; parameters without one (their first step: ``d = g``)."""
        est = _Estimates()
        for p, d in zip(bucket.params, directions):
            state = self.state[p]
            m = state.get("full_grad", state.get("ema"))
            if m is None:
                est.new.append((p, d))
            else:
                est.params.append(p)
                est.dirs.append(d)
                est.ests.append(m)
        return est

    def _direction_(self, bucket: Bucket, ops: TensorOps, directions: list[Tensor]) -> _Estimates:
        sigma, component = bucket.group["sigma"], bucket.group["component"]
        est = self._estimates(bucket, directions)
        est.grads = est.dirs  # where g lives once d is formed (component="full": a copy)
        if not est.dirs:
            return est  # first step: d = g in every mode
        if component == "noise":
            F.noise_direction_(ops, est.dirs, est.ests, sigma)  # d = g - sigma * m
        elif component == "full":
            est.grads = self._full_component_(ops, est.params, est.dirs, est.ests)  # d = m
        # component == "minibatch": d = g
        return est

    def _update_state_(
        self, bucket: Bucket, ops: TensorOps, directions: list[Tensor], est: _Estimates
    ) -> None:
        """``m <- lmbda m + (1 - lmbda) g`` with ``g`` recovered from what the direction left, and no
        temporary: for the noise component ``g = d + sigma m_est``, so with the EMA as estimate
        ``m <- (lmbda + (1 - lmbda) sigma) m + (1 - lmbda) d`` and with the oracle ``o``
        ``m <- lmbda m + (1 - lmbda) d + (1 - lmbda) sigma o``."""
        sigma, lmbda, component = bucket.group["sigma"], bucket.group["lmbda"], bucket.group["component"]
        own, with_oracle = ([], [], []), ([], [], [])  # (emas, dirs or g, oracles) by estimate
        for p, d, g, m in zip(est.params, est.dirs, est.grads, est.ests):
            ema = self.state[p].get("ema")
            if ema is None:  # the oracle was set before this parameter's first step
                est.new.append((p, d if component != "full" else g))
                continue
            target = own if ema is m else with_oracle
            target[0].append(ema)
            target[1].append(g)
            target[2].append(m)
        noise = component == "noise" and sigma != 0
        for (emas, gs, ms), recovered in ((own, noise), (with_oracle, False)):
            if not emas:
                continue
            decay = lmbda + (1.0 - lmbda) * sigma if recovered else lmbda
            mask = self._run.state_mask
            if mask is not None:  # capturable: no update on a skipped step (gs are zero there), no sync
                ops.scale_(emas, torch.where(mask, emas[0].new_full((), decay), emas[0].new_ones(())))
                ops.add_(emas, gs, 1.0 - lmbda)
                continue
            F.ema_(ops, emas, gs, decay, 1.0 - lmbda)
            if noise and not recovered:  # the oracle's share of g = d + sigma * o
                ops.add_(emas, ms, (1.0 - lmbda) * sigma)
        for p, g in est.new:  # first step: m = g
            m = g.clone(memory_format=torch.preserve_format)
            oracle = self.state[p].get("full_grad")
            if noise and oracle is not None and g is not self._grad_copy.get(p):
                m.add_(oracle, alpha=sigma)  # g = d + sigma * o
            self.state[p]["ema"] = m

    def _observe_(self, bucket: Bucket, ops: TensorOps, grads: list[Tensor]) -> None:
        """Unperturbed step (``perturb_every > 1``): ``m <- lmbda m + (1 - lmbda) g`` (``m = g`` on a
        parameter's first step), so that m averages every clean minibatch gradient."""
        lmbda = bucket.group["lmbda"]
        emas, gs = [], []
        for p, g in zip(bucket.params, grads):
            ema = self.state[p].get("ema")
            if ema is None:
                self.state[p]["ema"] = g.clone(memory_format=torch.preserve_format)
            else:
                emas.append(ema)
                gs.append(g)
        if emas:
            F.ema_(ops, emas, gs, lmbda, 1.0 - lmbda)  # lmbda < 1: always scaled, as before

    def buffer_tensors(self) -> dict[str, list[Tensor]]:
        buffers = super().buffer_tensors()
        buffers["ema"] = [s["ema"] for s in self.state.values() if "ema" in s]
        return {**buffers, **self._research_buffers()}


@dataclass
class _Estimates:
    """One bucket's split for one step (returned by ``_direction_``, handed back to ``_update_state_``)."""

    params: list[Tensor] = field(default_factory=list)  # parameters with an estimate m
    dirs: list[Tensor] = field(default_factory=list)  # their directions d
    ests: list[Tensor] = field(default_factory=list)  # m: the oracle if set, else the EMA
    grads: list[Tensor] = field(default_factory=list)  # where g is: dirs, or the copies (component="full")
    new: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (param, g) without an EMA yet
