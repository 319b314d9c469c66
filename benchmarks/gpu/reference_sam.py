"""The two step implementations other libraries are built on, transcribed for the step-cost benchmark.

``Davda54SAM``: the ~60-line template of davda54/sam (per-tensor norms stacked on one device, the weights
saved by ``clone`` and restored by rebinding ``p.data``). ``OfficialFSAM``: the official F-SAM code's first
step on the same template (EMA ``m`` of raw gradients, direction ``g - sigma * m``, REFERENCE.md section 1).
Both are written here from the published algorithm, not copied from the packages; they are contenders to
time, not part of friendly_sam (the golden tests hold ours to the official trajectories).
"""

from __future__ import annotations

from typing import Any

import torch


class Davda54SAM(torch.optim.Optimizer):
    def __init__(self, params: Any, base_optimizer: type, rho: float = 0.05, **kwargs: Any) -> None:
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    def _direction(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        return p.grad

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        directions = {
            p: self._direction(p, g) for g in self.param_groups for p in g["params"] if p.grad is not None
        }
        device = self.param_groups[0]["params"][0].device
        norm = torch.norm(torch.stack([d.norm(p=2).to(device) for d in directions.values()]), p=2)
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p in directions:
                    self.state[p]["old_p"] = p.data.clone()
                    p.add_(directions[p] * scale.to(p))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


class OfficialFSAM(Davda54SAM):
    def __init__(
        self,
        params: Any,
        base_optimizer: type,
        rho: float = 0.2,
        sigma: float = 1.0,
        lmbda: float = 0.6,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, base_optimizer, rho=rho, **kwargs)
        self.sigma, self.lmbda = sigma, lmbda

    def _direction(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        grad, state = p.grad.clone(), self.state[p]
        if "momentum" not in state:
            state["momentum"] = grad
            return grad
        direction = grad - self.sigma * state["momentum"]
        state["momentum"] = state["momentum"] * self.lmbda + grad * (1 - self.lmbda)
        return direction
