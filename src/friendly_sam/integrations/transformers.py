"""Hugging Face transformers: :class:`SAMTrainer`, a ``transformers.Trainer`` that runs both passes.

The Trainer calls ``optimizer.step()`` once per update, without a closure, after clipping the gradient
of the one backward pass it knows. :class:`SAMTrainer` instead completes the SAM/F-SAM step inside
``training_step`` of the last micro-batch of each update::

    clean pass of each micro-batch (the Trainer's own training_step: loss / accumulation, backward)
    first_step  ->  perturbed pass of the same micro-batches under frozen_bn_stats
    clip the perturbed gradient to args.max_grad_norm  ->  second_step

and hands the Trainer an optimizer view whose ``step()`` has nothing left to do. The view shares the SAM
optimizer's parameter groups (schedulers work) and its ``state_dict`` (the EMA is in the Trainer's
``optimizer.pt`` and comes back on ``resume_from_checkpoint``). fp16 loss scaling uses the accelerator's
GradScaler in ``first_step``/``second_step``; the Trainer's accelerator updates the scale once per step.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import transformers
from torch import nn
from torch.optim import Optimizer

from ..optim import FriendlySAM, TwoPassOptimizer
from ..optim.engine import TwoPassEngine


class _SteppedOptimizer(Optimizer):
    """The optimizer the Trainer (and its accelerator and LR scheduler) hold: the SAM optimizer's groups
    and state, with a ``step()`` that does nothing because :class:`SAMTrainer` already stepped."""

    # GradScaler.step then calls step(grad_scaler=...) instead of unscaling gradients that are gone.
    _step_supports_amp_scaling = True

    def __init__(self, sam: TwoPassOptimizer) -> None:
        super().__init__(sam.param_groups, sam.defaults)
        self.sam = sam
        self._bind()

    def _bind(self) -> None:
        self.param_groups = self.sam.param_groups
        self.state = self.sam.state

    def step(self, closure: Any = None, grad_scaler: Any = None) -> None:  # type: ignore[override]
        return None  # the step was taken in SAMTrainer.training_step

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sam.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.sam.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sam.load_state_dict(state_dict)
        self._bind()  # loading replaces the group dicts


class SAMTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that trains with SAM/ASAM/F-SAM.

    Built from the usual Trainer arguments plus ``rho``, ``sigma``, ``lmbda``, ``adaptive``,
    ``perturb_every`` (and ``sam_class``, default :class:`~friendly_sam.FriendlySAM`; use
    :class:`~friendly_sam.SAM` for SAM): the base optimizer is the one ``args.optim`` (or
    ``optimizer_cls_and_kwargs``) names, with the Trainer's weight-decay groups. Alternatively pass
    ``optimizers=(FriendlySAM(...), scheduler)`` or ``optimizer_cls_and_kwargs=(FriendlySAM, {...})``; a
    SAM argument given to SAMTrainer as well must then agree with the optimizer's (else a ValueError).

    Per update (:class:`~friendly_sam.optim.engine.TwoPassEngine`): the clean gradient of every micro-batch
    (``gradient_accumulation_steps``), one perturbation, the perturbed gradient of the same micro-batches
    (the Trainer's own ``training_step``: same autocast, same loss scaling), ``args.max_grad_norm`` applied
    to the applied gradient on every step (``perturb_every`` included), one base step: equal to the
    large-batch step. ``ascent_fraction=f`` runs the clean pass on the first ``f`` of each micro-batch's
    tensors; ``rng="replay"`` replays the clean pass's random draws. The micro-batches of an update are
    kept until its last one (references). The logged ``loss`` is the clean loss, ``grad_norm`` the applied
    gradient's norm before clipping. Under DDP (torchrun) the mode is *synchronized*: the clean gradient is
    all-reduced by the Trainer's own backward. DeepSpeed and FSDP are refused (they own the optimizer step).
    """

    def __init__(
        self,
        *args: Any,
        sam_class: type[TwoPassOptimizer] | None = None,
        rho: float | None = None,
        sigma: float | None = None,
        lmbda: float | None = None,
        adaptive: bool | None = None,
        perturb_every: int | None = None,
        ascent_fraction: float | None = None,
        rng: str = "fresh",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        given = {"rho": rho, "sigma": sigma, "lmbda": lmbda, "adaptive": adaptive, "perturb_every": perturb_every}
        self.sam_given = {k: v for k, v in given.items() if v is not None}
        self.sam_given_class = sam_class
        self.sam_class = sam_class or FriendlySAM
        hyper: dict[str, Any] = {"rho": 0.05, "adaptive": False, **self.sam_given}
        if issubclass(self.sam_class, FriendlySAM):
            hyper = {"sigma": 1.0, "lmbda": 0.9, **hyper}
        else:
            for name in ("sigma", "lmbda"):
                if name in hyper:
                    raise ValueError(f"{name}= is an F-SAM argument; sam_class={self.sam_class.__name__} has none")
        self.sam_hyperparameters = hyper
        self.sam_ascent_fraction, self.sam_rng = ascent_fraction, rng
        self.sam_optimizer: TwoPassOptimizer | None = None
        self._sam_engine: TwoPassEngine | None = None
        self._sam_grad_norm: torch.Tensor | None = None
        if self.accelerator.distributed_type.value in ("DEEPSPEED", "FSDP"):
            raise ValueError(
                f"SAMTrainer does not support {self.accelerator.distributed_type.value}: it owns the optimizer "
                "step; use single-process or DDP training"
            )

    def create_optimizer(self, model: nn.Module | None = None) -> Optimizer:
        if isinstance(self.optimizer, _SteppedOptimizer) or isinstance(
            getattr(self.optimizer, "optimizer", None), _SteppedOptimizer
        ):
            return self.optimizer  # already built (and maybe prepared by the accelerator): a later train()
        built_here = self.optimizer is None
        if built_here:
            built_here = self._build_sam(model)
        if not isinstance(self.optimizer, TwoPassOptimizer):
            raise TypeError(
                f"SAMTrainer needs a friendly_sam optimizer (FriendlySAM or SAM), got "
                f"{type(self.optimizer).__name__}; pass optimizers=(FriendlySAM(params, torch.optim.SGD, ...), "
                "scheduler), or leave optimizers out and give rho/sigma/lmbda to SAMTrainer"
            )
        if not built_here:
            _check_agrees(self.optimizer, self.sam_given, self.sam_given_class)
        self.sam_optimizer = self.optimizer
        self._sam_engine = TwoPassEngine(
            self.sam_optimizer,
            max_grad_norm=self.args.max_grad_norm,
            rng=self.sam_rng,
            ascent_fraction=self.sam_ascent_fraction,
            update_scaler=False,  # the accelerator's optimizer step updates the scale
            measure_norm=True,
        )
        self.optimizer = _SteppedOptimizer(self.sam_optimizer)
        return self.optimizer

    def _build_sam(self, model: nn.Module | None) -> bool:
        """The Trainer's own optimizer construction (groups, args.optim), with the SAM class around the
        base optimizer it would have built. False when ``optimizer_cls_and_kwargs`` named a SAM class
        (built from those arguments: SAMTrainer's own must agree with them)."""
        given = self.optimizer_cls_and_kwargs
        if given is not None and issubclass(given[0], TwoPassOptimizer):
            super().create_optimizer(model)
            return False
        base_cls, base_kwargs = given or self.get_optimizer_cls_and_kwargs(self.args, model or self.model)
        sam_kwargs = {"base_optimizer": base_cls, **self.sam_hyperparameters, **base_kwargs}
        self.optimizer_cls_and_kwargs = (self.sam_class, sam_kwargs)
        try:
            super().create_optimizer(model)
        finally:
            self.optimizer_cls_and_kwargs = given
        return True

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """The clean pass of this micro-batch; on the last micro-batch of an update, the whole SAM step."""
        engine = self._sam_engine
        if engine is None or self.sam_optimizer is None:
            raise RuntimeError("SAMTrainer: the optimizer was not created through create_optimizer()")
        engine.model = model
        clean = engine.clean_view(inputs)
        engine.add(partial(super().training_step, model, inputs, num_items_in_batch))
        loss = super().training_step(model, clean, num_items_in_batch if clean is inputs else None)
        if self.accelerator.sync_gradients:
            scaler = self.accelerator.scaler  # fp16 on an accelerator; None for fp32/bf16
            engine.scaler = scaler if scaler is not None and scaler.is_enabled() else None
            self._sam_grad_norm = engine.update()
        return loss

    # The Trainer clips and measures the gradient after training_step, when it is gone: the perturbed
    # gradient was clipped in the engine update, and its norm before clipping is what gets logged.
    def _clip_grad_norm(self, model: nn.Module) -> Any:
        return self._sam_grad_norm

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        return self._sam_grad_norm if grad_norm is None else grad_norm


def _check_agrees(sam: TwoPassOptimizer, given: dict[str, Any], sam_class: type | None) -> None:
    """SAM arguments given to SAMTrainer next to a ready optimizer must be the optimizer's own: a silently
    ignored ``rho=`` trains with another neighbourhood than the user asked for."""
    if sam_class is not None and not isinstance(sam, sam_class):
        raise ValueError(
            f"SAMTrainer(sam_class={sam_class.__name__}) conflicts with the optimizer you passed "
            f"({type(sam).__name__}): give one of them"
        )
    for name, value in given.items():
        if name == "perturb_every":
            have = {sam.perturb_every}
        else:
            have = {group.get(name) for group in sam.param_groups}
        if have != {value}:
            raise ValueError(
                f"SAMTrainer({name}={value!r}) conflicts with the optimizer you passed, which has {name}="
                f"{', '.join(map(repr, sorted(have, key=repr)))}: SAMTrainer's SAM arguments only build an "
                "optimizer when you pass none; set it in one place"
            )


__all__ = ["SAMTrainer"]
