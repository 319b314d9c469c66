"""The hand-written first_step/second_step loop every integration must reproduce, and shared tiny data.

Large-batch accumulation: for the micro-batches b1..bk of one step, the clean backward of each (loss/k),
one first_step, the perturbed backward of each under frozen_bn_stats, one second_step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from friendly_sam import FriendlySAM, frozen_bn_stats

Batch = tuple[torch.Tensor, torch.Tensor]
HPARAMS = {"rho": 0.1, "sigma": 1.0, "lmbda": 0.6, "lr": 0.1, "momentum": 0.9}


def make_net(seed: int = 0, batchnorm: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(8, 16)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def make_data(n: int = 48, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] > 0).long()).clamp(max=2)
    return x, y


def make_optimizer(params, **overrides) -> FriendlySAM:
    kw = {**HPARAMS, **overrides}
    return FriendlySAM(params, torch.optim.SGD, **kw)


def micro_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[Batch]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def reference_train(
    net: nn.Module,
    opt: FriendlySAM,
    steps: Sequence[Sequence[Batch]],
    *,
    clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    loss_fn: Callable = nn.functional.cross_entropy,
    divide_by: int | None = None,
) -> None:
    """One optimizer step per entry of ``steps`` (a list of micro-batches each); each micro-batch loss is
    divided by ``divide_by`` (default: the number of micro-batches of that step)."""
    net.train()

    def backward(x, y, k):
        ctx = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(net(x), y) / k
        (scaler.scale(loss) if scaler is not None else loss).backward()

    for micro in steps:
        k = divide_by or len(micro)
        opt.zero_grad(set_to_none=True)
        for x, y in micro:
            backward(x, y, k)
        opt.first_step(scaler=scaler)
        with frozen_bn_stats(net):
            for x, y in micro:
                backward(x, y, k)
        if clip:
            if scaler is not None:
                scaler.unscale_(opt.base_optimizer)
            torch.nn.utils.clip_grad_norm_(list(net.parameters()), clip)
        opt.second_step(scaler=scaler)
        if scaler is not None:
            scaler.update()


def assert_same_state(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    """Parameters AND buffers (BatchNorm running statistics, num_batches_tracked) agree to ``atol``."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        diff = (sa[key].double() - sb[key].double()).abs().max().item()
        assert diff <= atol, f"{key}: differs by {diff:.3g} from the reference loop"
