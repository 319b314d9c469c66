"""One training iteration: plain optimizers (SGD/AdamW) or two-pass ones (SAM, ASAM, F-SAM, and any
optimizer of another library with ``first_step``/``second_step``), single-process or under DDP.

Under ``DistributedDataParallel`` there are two defined perturbation modes
(:data:`~friendly_sam.distributed.PERTURBATION_MODES`):

``per-replica`` (default; SAM's "m-sharpness"): the first forward AND backward run inside
``ddp_model.no_sync()``, so every replica perturbs with the gradient of its own local batch and keeps
its own F-SAM EMA; the second (perturbed) gradient is all-reduced by DDP as usual, so the base step,
and hence the parameters, stay identical on every replica. One gradient all-reduce per step.

``synchronized``: both passes are ordinary DDP passes. The first gradient is all-reduced (averaged),
so all replicas perturb with the global-batch gradient and hold identical EMAs: the step equals a
single-process step over the global batch (without BatchNorm, or with SyncBatchNorm). Two gradient
all-reduces per step.

The common hand-written recipe puts only ``backward()`` under ``no_sync()``; DDP decides whether to
synchronise in *forward*, so that silently all-reduces the first gradient. Here the context wraps both.

The DDP step lives here, next to the step it builds on, rather than in :mod:`friendly_sam.distributed`:
that package holds the process-group runtime and sits below ``train`` (it never imports it).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..analysis import LossFn
from ..distributed import PER_REPLICA, check_mode
from ..optim.engine import TwoPassEngine, is_two_pass

__all__ = ["autocast_context", "ddp_training_step", "is_two_pass", "training_step"]


def autocast_context(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on the model's device, or nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn = nn.functional.cross_entropy,
    bf16: bool = False,
    max_grad_norm: float | None = None,
    first_pass_context: contextlib.AbstractContextManager[Any] | None = None,
    ascent_fraction: float | None = None,
    rng: str = "fresh",
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[Tensor, Tensor]:
    """Forward/backward (twice for two-pass optimizers) and the optimizer step; returns (loss, logits).

    A thin user of :class:`~friendly_sam.optim.engine.TwoPassEngine` with one micro-batch ``(x, y)``.
    Two-pass means :func:`is_two_pass`: clean forward/backward, ``first_step``, perturbed forward/backward
    (BatchNorm running statistics frozen), ``second_step``. The returned loss and logits are those of the
    clean first pass. ``first_pass_context`` wraps the first forward/backward (the DDP step passes
    ``model.no_sync()`` there for per-replica perturbations). ``max_grad_norm`` clips the applied gradient
    on every step (plain, perturbed or unperturbed); an optimizer with its own ``max_grad_norm`` clips itself
    (the same value here is accepted, another is an error). ``scaler``: an fp16 ``GradScaler`` (losses
    scaled, both passes unscaled, ``scaler.update()`` after the step). ``rng``: ``"fresh"`` (default: the
    perturbed pass draws its own dropout masks, as the hand-written loop) or ``"replay"``.

    Periodic perturbation (``perturb_every > 1`` on our optimizers): on an unperturbed step
    ``first_step`` takes the base step itself and the second pass is skipped.

    ``ascent_fraction`` ``f`` in (0, 1] (sub-batch ascent; default the optimizer's ``ascent_fraction``, else
    1): on a perturbed step the clean pass runs on the first ``ceil(f * len(y))`` samples only (the ascent
    direction and F-SAM's EMA come from them; BatchNorm statistics are updated by that pass only) and the
    perturbed pass on the whole batch; the returned loss and logits are then the sub-batch's
    (``len(logits) <= len(y)``: compare with ``y[:len(logits)]``). Unperturbed steps and plain optimizers use
    the whole batch. ``f = 1`` is the ordinary step exactly.
    """
    engine = TwoPassEngine(
        optimizer, model=model, scaler=scaler, max_grad_norm=max_grad_norm, rng=rng, ascent_fraction=ascent_fraction
    )
    xa, ya = engine.clean_view((x, y))

    def forward_backward(xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        with autocast_context(x.device, bf16):
            logits = model(xb)
            loss = loss_fn(logits, yb)
        (engine.scaler.scale(loss) if engine.scaler is not None else loss).backward()
        return loss, logits

    loss, logits = engine.clean_pass(
        lambda: forward_backward(xa, ya), perturbed=lambda: forward_backward(x, y), context=first_pass_context
    )
    engine.update()
    return loss.detach(), logits.detach()


def ddp_training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    mode: str = PER_REPLICA,
    loss_fn: LossFn = nn.functional.cross_entropy,
    global_batch_size: int | None = None,
    bf16: bool = False,
    max_grad_norm: float | None = None,
    ascent_fraction: float | None = None,
    rng: str = "fresh",
) -> tuple[Tensor, Tensor]:
    """One training iteration of a DDP-wrapped model; returns the local clean-pass ``(loss, logits)``.

    Built on :func:`training_step` (BatchNorm statistics frozen in the second pass, clipping as
    documented there), it only chooses what runs under ``model.no_sync()``:

    * ``mode="per-replica"``: the first forward and backward (each replica's own perturbation and EMA);
    * ``mode="synchronized"``: nothing (both gradients are all-reduced).

    An unperturbed step of ``perturb_every > 1`` (``next_step_perturbs`` False) is an ordinary DDP step
    in both modes: its clean gradient is the one the base optimizer applies, so it must be all-reduced.
    ``between="looksam"`` is refused in per-replica mode (each replica would measure its own component
    from its own clean gradient, and the replicas would drift apart); use synchronized mode.
    ``ascent_fraction``: as in :func:`training_step` (each replica's first samples).

    Plain optimizers (SGD, AdamW) and models not wrapped in DDP take the ordinary step in both modes.

    ``global_batch_size``: the size of the global batch whose slices the replicas hold. With it, the
    local loss is weighted by ``len(y) * world_size / global_batch_size`` so that DDP's average of the
    replicas' gradients is the gradient of the mean loss over the global batch even when the slices have
    unequal sizes (a last, partial batch); without it every replica's mean loss counts equally. The
    returned loss is the unweighted local mean. ``loss_fn`` must reduce by the mean.
    """
    context = _first_pass_context(model, optimizer, mode)
    weight = 1.0
    if isinstance(model, DistributedDataParallel) and global_batch_size is not None:
        weight = len(y) * torch.distributed.get_world_size(model.process_group) / global_batch_size
    step_loss_fn = loss_fn if weight == 1.0 else _scaled_loss(loss_fn, weight)
    loss, logits = training_step(
        model,
        optimizer,
        x,
        y,
        loss_fn=step_loss_fn,
        bf16=bf16,
        max_grad_norm=max_grad_norm,
        first_pass_context=context,
        ascent_fraction=ascent_fraction,
        rng=rng,
    )
    return (loss / weight if weight != 1.0 else loss), logits


def _first_pass_context(model: nn.Module, optimizer: Any, mode: str) -> Any:
    """What wraps the clean pass under DDP: ``no_sync()`` for a perturbed per-replica step, else None."""
    check_mode(mode)
    if not isinstance(model, DistributedDataParallel) or mode != PER_REPLICA:
        return None
    looksam = getattr(optimizer, "between", None) == "looksam" and getattr(optimizer, "perturb_every", 1) > 1
    if looksam:
        raise ValueError(
            "between='looksam' under DDP needs the perturbation mode 'synchronized': in 'per-replica' mode each "
            "replica's own clean gradient would give it its own LookSAM component, and the replicas would "
            "drift apart on the unperturbed steps; use --ddp-mode synchronized or --between base"
        )
    if is_two_pass(optimizer) and getattr(optimizer, "next_step_perturbs", True):
        return model.no_sync()
    return None


def _scaled_loss(loss_fn: LossFn, weight: float) -> LossFn:
    """``loss_fn`` times ``weight`` (a replica's share of an unequally split global batch)."""

    def scaled(logits: Tensor, target: Tensor) -> Tensor:
        return loss_fn(logits, target) * weight

    return scaled
