"""F-SAM's research instrumentation, apart from the update: the paper's component ablation (``component=``),
the oracle full gradient (:meth:`FSAMResearch.set_full_gradient`) and the direction diagnostics
(``track_diagnostics=True``; the sums themselves in ``diagnostics.py``).

A mixin of :class:`~friendly_sam.optim.fsam.FriendlySAM`: the default F-SAM update (``component="noise"``,
no oracle, no diagnostics) never reaches past the checks here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .diagnostics import DirectionDiagnostics
from .tensor_ops import TensorOps

__all__ = ["COMPONENTS", "FSAMResearch"]

# The perturbation components of the paper's ablation (the one definition in the package).
COMPONENTS = ("noise", "full", "minibatch")


class FSAMResearch:
    """Oracle full gradient, ``component="full"`` and diagnostics of :class:`FriendlySAM`."""

    state: Any
    param_groups: list[dict[str, Any]]
    track_diagnostics: bool

    def _init_research(self, track_diagnostics: bool) -> None:
        self.track_diagnostics = bool(track_diagnostics)
        self._grad_copy: dict[Tensor, Tensor] = {}  # component="full": g, kept for the EMA update
        self._diagnostics = DirectionDiagnostics()

    # ----------------------------------------------------------------- oracle full gradient
    @torch.no_grad()
    def set_full_gradient(self, gradients: Sequence[Tensor | None] | Mapping[Tensor, Tensor | None]) -> None:
        """Use these full-batch gradients as ``m`` in the direction, in place of the EMA, until cleared.

        Args:
            gradients: one tensor per parameter, in ``param_groups`` order (``None``: a zero gradient),
                or a mapping parameter -> tensor covering every parameter. Copied (into a buffer kept
                across calls); must be finite.
        """
        if getattr(self, "capturable", False):
            raise ValueError("set_full_gradient() is not supported with capturable=True (a research option)")
        if self.is_perturbed:
            raise RuntimeError("set_full_gradient() between first_step() and second_step()")
        params = self._params()
        if isinstance(gradients, Mapping):
            missing = [i for i, p in enumerate(params) if p not in gradients]
            if missing:
                raise ValueError(f"set_full_gradient: no gradient for parameter(s) at index {missing}")
            gradients = [gradients[p] for p in params]
        gradients = list(gradients)
        if len(gradients) != len(params):
            raise ValueError(
                f"set_full_gradient: got {len(gradients)} tensors for {len(params)} parameters "
                "(one per parameter, in param_groups order; None for a zero gradient)"
            )
        for i, (p, g) in enumerate(zip(params, gradients)):
            if g is not None and tuple(g.shape) != tuple(p.shape):
                raise ValueError(
                    f"set_full_gradient: tensor {i} has shape {tuple(g.shape)}, its parameter {tuple(p.shape)}"
                )
            if g is not None and not bool(torch.isfinite(g).all()):
                raise ValueError(f"set_full_gradient: tensor {i} holds inf or nan")
        for p, g in zip(params, gradients):
            buf = self.state[p].get("full_grad")
            if buf is None:
                buf = self.state[p]["full_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if g is None:
                buf.zero_()
            else:
                buf.copy_(g)

    def clear_full_gradient(self) -> None:
        """Go back to the EMA as the full-gradient estimate."""
        for p in self._params():
            self.state[p].pop("full_grad", None)

    def _host_decisions(self) -> bool:
        """The research options decide on the host: a step using one reads its checks as they arise."""
        if self.track_diagnostics or any(group["component"] == "full" for group in self.param_groups):
            return True
        return any("full_grad" in state for state in self.state.values())

    # ----------------------------------------------------------------- diagnostics (instrumentation)
    def read_diagnostics(self, reset: bool = True) -> dict[str, float | int | None]:
        """Means over the steps since the last reset: ``cos_g_m`` = cos(g, m) and ``noise_ratio`` =
        ``||g - sigma m|| / ||sigma m||`` (``None`` when no step had an estimate, or ``sigma m = 0``);
        ``steps`` counts the steps that had an estimate. One host sync."""
        return self._diagnostics.read(reset)

    def _direction_known(self, buckets: list[tuple[Any, TensorOps]], contexts: list[Any]) -> None:
        if not self.track_diagnostics:
            return
        parts = [
            DirectionDiagnostics.bucket_sums(
                ops, bucket.group["component"], bucket.group["sigma"], est.dirs, est.ests, est.grads
            )
            for (bucket, ops), est in zip(buckets, contexts)
            if est.dirs
        ]
        self._diagnostics.commit(parts)

    # ----------------------------------------------------------------- the "full" component
    def _full_component_(self, ops: TensorOps, params: list[Tensor], dirs: list[Tensor], ests: list[Tensor]):
        """``component="full"``: ``d = m``; ``g`` is kept in a copy for the EMA update, which is returned."""
        grads = [self._grad_copy_buffer(p) for p in params]
        ops.copy_(grads, dirs)  # keep g for the EMA update
        ops.copy_(dirs, ests)  # d = m
        # d no longer holds g: make an inf/nan in g visible to the finiteness check (0 * inf = nan).
        poison = torch.stack(ops.norms(grads)).sum() * 0.0
        for d in dirs:
            d.add_(poison)
        return grads

    def _grad_copy_buffer(self, p: Tensor) -> Tensor:
        buf = self._grad_copy.get(p)
        if buf is None:
            buf = self._grad_copy[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buf

    def _research_buffers(self) -> dict[str, list[Tensor]]:
        return {"grad_copy": list(self._grad_copy.values())} if self._grad_copy else {}
