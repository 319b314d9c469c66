from __future__ import annotations

import torch
from torch import nn


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def make_batches(n: int, seed: int = 1, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 1, 6, 6, generator=gen), torch.randint(0, 3, (batch,), generator=gen))
        for _ in range(n)
    ]


def sam_iteration(model, opt, x, y, **step_kw) -> torch.Tensor:
    """One user-style F-SAM/SAM iteration with the BatchNorm helper."""
    from friendly_sam import frozen_bn_stats

    scaler = step_kw.get("scaler")
    scale = scaler.scale if scaler is not None else (lambda v: v)
    loss = nn.functional.cross_entropy(model(x), y)
    scale(loss).backward()
    opt.first_step(zero_grad=True, **step_kw)
    with frozen_bn_stats(model):
        scale(nn.functional.cross_entropy(model(x), y)).backward()
    opt.second_step(zero_grad=True, **step_kw)
    return loss.detach()
