"""PyTorch Lightning: automatic optimisation that runs SAM/F-SAM exactly, and a manual-optimisation step.

Lightning's automatic optimisation calls ``optimizer.step(closure)`` once per step, and its fp16 plugin
calls the closure once, then ``scaler.step(optimizer)`` without it; neither knows about the second pass.
:class:`SAMLightningMixin` replaces the ``optimizer_step`` hook for friendly_sam optimizers::

    clean pass (Lightning's closure: training_step + backward)  ->  first_step
    perturbed pass under frozen_bn_stats (the same closure)     ->  clip (gradient_clip_val)  ->  second_step

* BatchNorm running statistics come from the clean pass only.
* ``accumulate_grad_batches = k``: the micro-batches of the step are kept (references, on the device)
  and replayed at the perturbed weights, so the update is the large-batch update (clean gradients of
  all k, one perturbation, perturbed gradients of the same k, one step).
* ``precision="16-mixed"``: the plugin's GradScaler is passed to ``first_step``/``second_step`` (both
  unscale, an overflow skips the step, the EMA stays clean) and updated once per step.
* ``gradient_clip_val`` clips the perturbed gradient, the one the base optimizer applies; the clean
  gradient that defines the perturbation is not clipped.
* ``self.log`` calls made during the perturbed pass are dropped: logged values come from the clean pass.

Nothing here imports Lightning at module level: the mixin only uses the hooks Lightning calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..optim import TwoPassOptimizer, frozen_bn_stats
from ._common import check_single_clip, clip_perturbed_gradient, require_two_pass, unwrap_two_pass


def _scaler_of(trainer: Any) -> torch.amp.GradScaler | None:
    """The fp16 loss scaler of Lightning's precision plugin (``MixedPrecision.scaler``), or None."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def _loss_of(output: Any) -> torch.Tensor | None:
    """The loss in a ``training_step`` output, read as Lightning reads it (a tensor or ``{"loss": ...}``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output.get("loss")
    return None


class SAMLightningMixin:
    """Put it before ``LightningModule`` in the bases: ``class Net(SAMLightningMixin, pl.LightningModule)``.

    ``configure_optimizers`` returns a :class:`~friendly_sam.FriendlySAM` or :class:`~friendly_sam.SAM`
    (a plain optimizer passes through to Lightning's own step). If you override ``on_train_batch_start``,
    ``optimizer_step``, ``configure_gradient_clipping`` or ``log``, call ``super()``. Tested on a single
    device; under DDP the earlier micro-batches' perturbed backward runs outside the DDP forward (no sync)
    and the last one synchronises the sum, which is expected to be right but is not tested here.
    Strategies that own the optimizer step (DeepSpeed, XLA, FSDP) are not supported. The
    ``training_step`` output Lightning hands to ``on_train_batch_end`` is the perturbed pass's.
    """

    _sam_in_perturbed_pass = False

    # -------------------------------------------------------------- hooks Lightning calls
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        # Keep the micro-batches of the current accumulation window for the perturbed replay.
        if not hasattr(self, "_sam_window") or self._sam_window_done:
            self._sam_window: list[tuple[Any, int]] = []
            self._sam_window_done = False
        self._sam_window.append((batch, batch_idx))
        return super().on_train_batch_start(batch, batch_idx)  # type: ignore[misc]

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable[[], Any] | None = None
    ) -> None:
        sam = unwrap_two_pass(optimizer)
        if sam is None or not self.automatic_optimization:  # type: ignore[attr-defined]
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # type: ignore[misc]
        if optimizer_closure is None:
            raise RuntimeError("SAMLightningMixin.optimizer_step needs Lightning's optimizer_closure")
        window = getattr(self, "_sam_window", [])
        earlier = window[:-1]  # the last one is this batch, run through Lightning's closure
        self._sam_window_done = True
        trainer = self.trainer  # type: ignore[attr-defined]
        scaler = _scaler_of(trainer)
        check_single_clip(sam, trainer.gradient_clip_val)
        if optimizer_closure() is None:  # training_step returned None: Lightning skips the step
            sam.zero_grad(set_to_none=True)
            return
        sam.first_step(zero_grad=True, scaler=scaler)
        self._sam_in_perturbed_pass = True
        try:
            with frozen_bn_stats(self):  # type: ignore[arg-type]
                for batch, idx in earlier:
                    self._sam_replay(batch, idx, optimizer)
                optimizer_closure()
        finally:
            self._sam_in_perturbed_pass = False
        self._sam_before_second_step(sam, optimizer, scaler)
        sam.second_step(zero_grad=True, scaler=scaler)
        if scaler is not None:
            scaler.update()

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning calls this after every closure; for a friendly_sam optimizer the clipping is done once,
        # on the perturbed gradient, in optimizer_step (see _sam_before_second_step).
        if unwrap_two_pass(optimizer) is not None and self.automatic_optimization:  # type: ignore[attr-defined]
            return None
        return super().configure_gradient_clipping(  # type: ignore[misc]
            optimizer, gradient_clip_val, gradient_clip_algorithm
        )

    def log(self, *args: Any, **kwargs: Any) -> None:
        if self._sam_in_perturbed_pass:  # the perturbed loss is not the model's loss: keep it out of logs
            return None
        return super().log(*args, **kwargs)  # type: ignore[misc]

    def log_dict(self, *args: Any, **kwargs: Any) -> None:
        if self._sam_in_perturbed_pass:
            return None
        return super().log_dict(*args, **kwargs)  # type: ignore[misc]

    # -------------------------------------------------------------- internals
    def _sam_replay(self, batch: Any, batch_idx: int, optimizer: Any) -> None:
        """Perturbed forward/backward of an earlier micro-batch, scaled like Lightning's closure does."""
        trainer = self.trainer  # type: ignore[attr-defined]
        loss = _loss_of(self.training_step(batch, batch_idx))  # type: ignore[attr-defined]
        if loss is None:
            return
        trainer.strategy.backward(loss / trainer.accumulate_grad_batches, optimizer)

    def _sam_before_second_step(
        self, sam: TwoPassOptimizer, optimizer: Any, scaler: torch.amp.GradScaler | None
    ) -> None:
        """Lightning's on_before_optimizer_step hooks, then gradient_clip_val on the perturbed gradient."""
        trainer = self.trainer  # type: ignore[attr-defined]
        for callback in trainer.callbacks:
            callback.on_before_optimizer_step(trainer, self, optimizer)
        self.on_before_optimizer_step(optimizer)  # type: ignore[attr-defined]
        if trainer.gradient_clip_val:
            algorithm = str(
                getattr(trainer.gradient_clip_algorithm, "value", trainer.gradient_clip_algorithm)
            )
            if algorithm not in ("None", "norm"):
                raise ValueError(
                    f"gradient_clip_algorithm={algorithm!r} is not supported with "
                    f"{type(sam).__name__}: use 'norm' (the perturbed gradient is clipped by its global norm)"
                )
            clip_perturbed_gradient(sam, float(trainer.gradient_clip_val), scaler)


def sam_manual_step(module: Any, closure: Callable[[], Any], optimizer: Any = None) -> Any:
    """One SAM/F-SAM step in Lightning *manual* optimisation, counted by Lightning (``global_step``,
    ``max_steps``, step-based checkpoints and schedulers behave as with a plain optimizer).

    ``closure`` computes the loss and calls ``module.manual_backward(loss)``; it is run twice, the second
    time at the perturbed weights with BatchNorm statistics frozen and ``self.log`` muted (with
    :class:`SAMLightningMixin` in the bases). Returns the clean loss. Gradient clipping in manual mode is
    yours: pass ``max_grad_norm=`` to the optimizer. fp16 loss scaling (``16-mixed``) is not supported in
    manual mode (Lightning's plugin then steps the optimizer without the closure): use automatic
    optimisation with :class:`SAMLightningMixin`, or ``bf16-mixed``.
    """
    optimizer = module.optimizers() if optimizer is None else optimizer
    sam = require_two_pass(optimizer, "sam_manual_step")
    if _scaler_of(module.trainer) is not None:
        raise RuntimeError(
            "sam_manual_step: fp16 loss scaling (precision='16-mixed') cannot run in manual optimisation, "
            "because Lightning's plugin calls optimizer.step() without the closure; use automatic "
            "optimisation with SAMLightningMixin (supported with 16-mixed) or precision='bf16-mixed'"
        )

    def two_pass_closure() -> Any:
        if not sam.is_perturbed:
            sam.zero_grad(set_to_none=True)  # a fresh step: nothing left from the previous one
            return closure()
        module._sam_in_perturbed_pass = True
        try:
            with frozen_bn_stats(module):
                return closure()
        finally:
            module._sam_in_perturbed_pass = False

    return optimizer.step(closure=two_pass_closure)


__all__ = ["SAMLightningMixin", "sam_manual_step"]
