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

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from ..optim import frozen_bn_stats
from ..optim.engine import TwoPassEngine
from ._common import require_two_pass, unwrap_two_pass


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
    ``optimizer_step``, ``configure_gradient_clipping`` or ``log``, call ``super()``. The update is
    :class:`~friendly_sam.optim.engine.TwoPassEngine`'s: the perturbed pass of every micro-batch runs
    through the strategy's ``training_step`` (Lightning's precision context: bf16/fp16 autocast) and
    ``backward`` (the fp16 loss scale); ``gradient_clip_val`` clips the applied gradient on every step
    (``perturb_every`` included). Class attribute ``sam_rng = "replay"`` replays the clean pass's random
    draws (augmentation, dropout) in the perturbed pass; the default ``"fresh"`` draws anew, as the
    hand-written loop. ``StochasticWeightAveraging``'s BatchNorm epoch (no backward) takes no step.

    DDP (Lightning's ``strategy="ddp"``): *synchronized* mode: the clean gradient of the update is
    all-reduced (Lightning's own backward), so every replica perturbs with the global gradient; the
    perturbed micro-batches all-reduce once, on the last. Sub-batch ascent (``ascent_fraction < 1``) is
    refused: Lightning runs the clean pass on the whole batch. Strategies that own the optimizer step
    (DeepSpeed, XLA, FSDP) are not supported. The ``training_step`` output Lightning hands to
    ``on_train_batch_end`` is the perturbed pass's.
    """

    sam_rng = "fresh"
    _sam_in_perturbed_pass = False
    _sam_engine: TwoPassEngine | None = None

    # -------------------------------------------------------------- hooks Lightning calls
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        # Open or extend the update: this micro-batch's perturbed pass replays it (the last one of the
        # update is replaced by Lightning's closure in optimizer_step); the RNG is captured here for "replay".
        engine = self._sam_engine_for_batch()
        if engine is not None:
            engine.add(partial(self._sam_replay, batch, batch_idx, self.trainer.optimizers[0]))  # type: ignore[attr-defined]
        return super().on_train_batch_start(batch, batch_idx)  # type: ignore[misc]

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable[[], Any] | None = None
    ) -> None:
        sam = unwrap_two_pass(optimizer)
        if sam is None or not self.automatic_optimization:  # type: ignore[attr-defined]
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # type: ignore[misc]
        if optimizer_closure is None:
            raise RuntimeError("SAMLightningMixin.optimizer_step needs Lightning's optimizer_closure")
        trainer = self.trainer  # type: ignore[attr-defined]
        engine = self._sam_engine
        if engine is None or trainer.fit_loop._skip_backward:
            # StochasticWeightAveraging's BatchNorm epoch: forward passes only, no gradient, no step
            optimizer_closure()
            return
        if engine.window:  # this batch's perturbed pass: Lightning's closure (its output reaches the hooks)
            engine.window[-1].perturbed = partial(self._sam_perturbed, optimizer_closure)
        if optimizer_closure() is None:  # training_step returned None: Lightning skips the step
            engine.window = []
            sam.zero_grad(set_to_none=True)
            return
        engine.scaler = _scaler_of(trainer)
        engine.update(before_apply=partial(self._sam_before_apply, optimizer))

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning calls this after every closure; for a friendly_sam optimizer the engine clips the applied
        # gradient once per update.
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
    def _sam_engine_for_batch(self) -> TwoPassEngine | None:
        """The engine of this module's two-pass optimizer (built on first use), or None where the mixin
        stands aside: manual optimisation, a plain optimizer, SWA's BatchNorm epoch."""
        trainer = self.trainer  # type: ignore[attr-defined]
        if not self.automatic_optimization or not trainer.optimizers:  # type: ignore[attr-defined]
            return None
        sam = unwrap_two_pass(trainer.optimizers[0])
        if sam is None or trainer.fit_loop._skip_backward:
            return None
        if self._sam_engine is None or self._sam_engine.sam is not sam:
            self._sam_engine = TwoPassEngine(
                sam,
                model=self,  # type: ignore[arg-type]
                max_grad_norm=_clip_value(trainer, sam),
                rng=self.sam_rng,
                perturbed_sync=partial(_perturbed_sync, trainer.strategy),
            )
            if self._sam_engine.ascent_fraction < 1.0:
                raise ValueError(
                    "ascent_fraction < 1 cannot run in Lightning automatic optimisation (Lightning runs the "
                    "clean pass on the whole batch): use ascent_fraction=1, or friendly_sam.train.training_step "
                    "in manual optimisation"
                )
        return self._sam_engine

    def _sam_perturbed(self, run: Callable[[], Any]) -> Any:
        self._sam_in_perturbed_pass = True
        try:
            return run()
        finally:
            self._sam_in_perturbed_pass = False

    def _sam_replay(self, batch: Any, batch_idx: int, optimizer: Any) -> None:
        """Perturbed forward/backward of an earlier micro-batch, as Lightning's closure runs it: the
        strategy's training_step (precision context, DDP forward), loss / accumulate_grad_batches, the
        strategy's backward (fp16 loss scale)."""
        trainer = self.trainer  # type: ignore[attr-defined]
        loss = _loss_of(self._sam_perturbed(partial(trainer.strategy.training_step, batch, batch_idx)))
        if loss is None:
            return
        trainer.strategy.backward(loss / trainer.accumulate_grad_batches, optimizer)

    def _sam_before_apply(self, optimizer: Any) -> None:
        """Lightning's on_before_optimizer_step hooks, before the applied gradient is clipped."""
        trainer = self.trainer  # type: ignore[attr-defined]
        for callback in trainer.callbacks:
            callback.on_before_optimizer_step(trainer, self, optimizer)
        self.on_before_optimizer_step(optimizer)  # type: ignore[attr-defined]


def _clip_value(trainer: Any, sam: Any) -> float | None:
    """``gradient_clip_val`` (by norm only: the applied gradient is clipped by its global norm)."""
    if not trainer.gradient_clip_val:
        return None
    algorithm = str(getattr(trainer.gradient_clip_algorithm, "value", trainer.gradient_clip_algorithm))
    if algorithm not in ("None", "norm"):
        raise ValueError(
            f"gradient_clip_algorithm={algorithm!r} is not supported with {type(sam).__name__}: use 'norm' "
            "(the applied gradient is clipped by its global norm)"
        )
    return float(trainer.gradient_clip_val)


def _perturbed_sync(strategy: Any, last: bool) -> Any:
    """DDP: the perturbed backward of all but the last micro-batch skips the all-reduce."""
    block = getattr(strategy, "block_backward_sync", None)
    return contextlib.nullcontext() if last or block is None else block()


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
