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

from typing import Any

import torch
import transformers
from torch import nn
from torch.optim import Optimizer

from ..optim import FriendlySAM, TwoPassOptimizer, frozen_bn_stats
from ._common import check_single_clip, clip_perturbed_gradient


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

    Built from the usual Trainer arguments plus ``rho``, ``sigma``, ``lmbda``, ``adaptive`` (and
    ``sam_class``, default :class:`~friendly_sam.FriendlySAM`; use :class:`~friendly_sam.SAM` for SAM):
    the base optimizer is the one ``args.optim`` (or ``optimizer_cls_and_kwargs``) names, with the
    Trainer's weight-decay groups. Alternatively pass ``optimizers=(FriendlySAM(...), scheduler)`` or
    ``optimizer_cls_and_kwargs=(FriendlySAM, {"base_optimizer": torch.optim.SGD, "rho": ..., "lr": ...})``.

    Per update: the clean gradient of every micro-batch (``gradient_accumulation_steps``), one
    perturbation, the perturbed gradient of the same micro-batches, ``args.max_grad_norm`` applied to the
    perturbed gradient, one base step: equal to the large-batch step. The micro-batches of an update are
    kept until its last one (references). Each micro-batch costs two forward/backward passes. The logged
    ``loss`` is the clean loss, ``grad_norm`` the perturbed gradient's norm before clipping. Tested in a
    single process; under DDP each perturbed micro-batch synchronises (correct, k all-reduces; untested).
    DeepSpeed and FSDP are refused (they own the optimizer step).
    """

    def __init__(
        self,
        *args: Any,
        sam_class: type[TwoPassOptimizer] = FriendlySAM,
        rho: float = 0.05,
        sigma: float = 1.0,
        lmbda: float = 0.9,
        adaptive: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        hyper = {"rho": rho, "adaptive": adaptive}
        if issubclass(sam_class, FriendlySAM):
            hyper.update(sigma=sigma, lmbda=lmbda)
        self.sam_class = sam_class
        self.sam_hyperparameters = hyper
        self.sam_optimizer: TwoPassOptimizer | None = None
        self._sam_window: list[tuple[Any, Any]] = []
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
        if self.optimizer is None:
            self._build_sam(model)
        if not isinstance(self.optimizer, TwoPassOptimizer):
            raise TypeError(
                f"SAMTrainer needs a friendly_sam optimizer (FriendlySAM or SAM), got "
                f"{type(self.optimizer).__name__}; pass optimizers=(FriendlySAM(params, torch.optim.SGD, ...), "
                "scheduler), or leave optimizers out and give rho/sigma/lmbda to SAMTrainer"
            )
        check_single_clip(self.optimizer, self.args.max_grad_norm)
        self.sam_optimizer = self.optimizer
        self.optimizer = _SteppedOptimizer(self.sam_optimizer)
        return self.optimizer

    def _build_sam(self, model: nn.Module | None) -> None:
        """The Trainer's own optimizer construction (groups, args.optim), with the SAM class around the
        base optimizer it would have built."""
        given = self.optimizer_cls_and_kwargs
        if given is not None and issubclass(given[0], TwoPassOptimizer):
            super().create_optimizer(model)
            return
        base_cls, base_kwargs = given or self.get_optimizer_cls_and_kwargs(self.args, model or self.model)
        sam_kwargs = {"base_optimizer": base_cls, **self.sam_hyperparameters, **base_kwargs}
        self.optimizer_cls_and_kwargs = (self.sam_class, sam_kwargs)
        try:
            super().create_optimizer(model)
        finally:
            self.optimizer_cls_and_kwargs = given

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """The clean pass of this micro-batch; on the last micro-batch of an update, the whole SAM step."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._sam_window.append((inputs, num_items_in_batch))
        if self.accelerator.sync_gradients:
            window, self._sam_window = self._sam_window, []
            self._sam_step(model, window)
        return loss

    def _sam_step(self, model: nn.Module, window: list[tuple[Any, Any]]) -> None:
        sam = self.sam_optimizer
        if sam is None:
            raise RuntimeError("SAMTrainer: the optimizer was not created through create_optimizer()")
        scaler = self.accelerator.scaler  # fp16 on an accelerator; None for fp32/bf16
        scaler = scaler if scaler is not None and scaler.is_enabled() else None
        sam.first_step(zero_grad=True, scaler=scaler)
        with frozen_bn_stats(model):
            for inputs, num_items in window:
                super().training_step(model, inputs, num_items)
        self._sam_grad_norm = clip_perturbed_gradient(sam, self.args.max_grad_norm, scaler)
        sam.second_step(zero_grad=True, scaler=scaler)

    # The Trainer clips and measures the gradient after training_step, when it is gone: the perturbed
    # gradient was clipped in _sam_step, and its norm before clipping is what gets logged.
    def _clip_grad_norm(self, model: nn.Module) -> Any:
        return self._sam_grad_norm

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        return self._sam_grad_norm if grad_norm is None else grad_norm


__all__ = ["SAMTrainer"]
