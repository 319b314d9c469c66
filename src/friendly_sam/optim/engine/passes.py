"""What every perturbed pass shares: which optimizer and model, BatchNorm frozen, the RNG replayed."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim import Optimizer

from ..batchnorm import frozen_bn_stats

RNG_MODES = ("fresh", "replay")


def is_two_pass(optimizer: Any) -> bool:
    """Whether ``optimizer`` takes SAM's two passes: it has callable ``first_step`` and ``second_step``
    (ours, or e.g. pytorch-optimizer's ``SAM``/``FriendlySAM``: no adapter needed)."""
    return callable(getattr(optimizer, "first_step", None)) and callable(
        getattr(optimizer, "second_step", None)
    )


def unwrap_two_pass(optimizer: Any) -> Any:
    """The two-pass optimizer behind a framework's wrapper (Lightning's ``LightningOptimizer``, accelerate's
    ``AcceleratedOptimizer``: they keep it in ``.optimizer`` or ``._optimizer``), or ``None``."""
    for _ in range(4):  # innermost first: Lightning's wrapper is itself an instance of the optimizer's class
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, Optimizer) or inner is optimizer:
            break
        optimizer = inner
    return optimizer if is_two_pass(optimizer) and hasattr(optimizer, "base_optimizer") else None


# ----------------------------------------------------------------------------- the model an optimizer knows
def bind_model(optimizer: Any, model: nn.Module | None, rng: str | None = None) -> Any:
    """Tell a two-pass optimizer which model its parameters belong to: ``step(closure)`` then runs the
    perturbed closure call with that model's BatchNorm running statistics frozen (what Composer, skorch,
    ignite and Lightning without the mixin need: they call ``step(closure)`` and know nothing of BatchNorm).
    Same as the optimizer's ``model=`` argument. ``rng="replay"``: the perturbed closure call replays the
    clean call's random draws (module docstring). Returns the optimizer."""
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (or None), got {type(model).__name__}")
    target = unwrap_two_pass(optimizer) or optimizer
    target.model = model
    if rng is not None:
        target.rng = check_rng_mode(rng)
    return optimizer


def bound_model(optimizer: Any) -> nn.Module | None:
    """The model given by :func:`bind_model` (or ``model=``), or ``None``."""
    return getattr(unwrap_two_pass(optimizer) or optimizer, "model", None)


# ----------------------------------------------------------------------------- randomness of the second pass
@dataclasses.dataclass(frozen=True)
class RngState:
    """The CPU generator state and, when CUDA is initialised, every CUDA device's."""

    cpu: Tensor
    cuda: tuple[Tensor, ...] | None

    @classmethod
    def capture(cls) -> RngState:
        cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def replayed(self) -> Iterator[None]:
        """Inside: the generators as captured; afterwards: as they were before the block."""
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(list(self.cuda))
            yield


def check_rng_mode(rng: str) -> str:
    if rng not in RNG_MODES:
        raise ValueError(
            f"invalid rng={rng!r}: use 'fresh' (the perturbed pass draws its own random numbers, as the "
            "hand-written loop) or 'replay' (it replays the clean pass's draws: same augmentation, same dropout)"
        )
    return rng


@contextlib.contextmanager
def perturbed_pass(model: nn.Module | None, rng: RngState | None = None) -> Iterator[None]:
    """The context of every perturbed forward/backward: BatchNorm running statistics of ``model`` frozen
    (batch statistics still normalise), and the random generators replayed from ``rng`` when given."""
    with frozen_bn_stats(model) if model is not None else contextlib.nullcontext():
        with rng.replayed() if rng is not None else contextlib.nullcontext():
            yield


@contextlib.contextmanager
def frozen_bn_stats_of_every_module() -> Iterator[None]:
    """:func:`frozen_bn_stats` for callers that do not know the model: every BatchNorm layer that runs a
    forward inside the block (through a global module forward pre-hook) stops updating its running
    statistics until the block ends. BatchNorm called functionally (``F.batch_norm`` with running buffers)
    is not seen: bind the model (:func:`bind_model`) instead."""
    frozen: list[_BatchNorm] = []

    def freeze(module: nn.Module, args: Any) -> None:
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            module.track_running_stats = False
            frozen.append(module)

    handle = register_module_forward_pre_hook(freeze)
    try:
        yield
    finally:
        handle.remove()
        for module in frozen:
            module.track_running_stats = True
