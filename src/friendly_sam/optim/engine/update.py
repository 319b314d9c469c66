"""One update over the micro-batches of an optimizer step (:class:`TwoPassEngine`), and clipping of the
gradient it applies."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .ascent import ascent_fraction_of, slice_batch
from .passes import RngState, bound_model, check_rng_mode, is_two_pass, perturbed_pass, unwrap_two_pass


# ----------------------------------------------------------------------------- clipping the applied gradient
def check_single_clip(sam: Any, max_norm: float | None) -> None:
    """Refuse clipping in two places (the optimizer's ``max_grad_norm`` and the framework's), before any
    step runs: the second clip would unscale an fp16 gradient twice."""
    if max_norm and max_norm > 0 and getattr(sam, "max_grad_norm", None) is not None:
        raise ValueError(
            f"the applied gradient would be clipped twice: the optimizer has max_grad_norm="
            f"{sam.max_grad_norm} and the framework clips to {max_norm}; set one of them only"
        )


def _grad_params(optimizer: Any) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def clip_applied_gradient(sam: Any, max_norm: float | None, scaler: torch.amp.GradScaler | None) -> Tensor:
    """Clip the perturbed gradient (the one the base optimizer applies) to ``max_norm`` (no clipping for
    None/0) before ``second_step``; returns its global norm before clipping (unscaled). With a scaler and
    clipping, the gradient is unscaled first, recorded against the base optimizer, exactly as
    ``second_step(scaler=...)`` expects (it then does not unscale again)."""
    params = _grad_params(sam)
    if not max_norm or max_norm <= 0:
        if not params:
            return torch.zeros(())
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        return norm / scaler.get_scale() if scaler is not None else norm
    check_single_clip(sam, max_norm)
    if scaler is not None:
        scaler.unscale_(sam.base_optimizer)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


@contextlib.contextmanager
def _optimizer_clips(sam: Any, max_norm: float | None) -> Iterator[None]:
    """The framework's clip value as the optimizer's own ``max_grad_norm`` for one unperturbed step: the
    optimizer then clips the clean gradient it applies, after unscaling it (``perturb_every > 1``)."""
    if not max_norm or max_norm <= 0:
        yield
        return
    check_single_clip(sam, max_norm)
    sam.max_grad_norm = float(max_norm)
    try:
        yield
    finally:
        sam.max_grad_norm = None


def _resolve_clip(sam: Any, max_norm: float | None) -> float | None:
    """The clip value the engine applies: the framework's, unless the optimizer clips itself (its own
    ``max_grad_norm``; the same value given to both is the optimizer's alone, a different one an error)."""
    if not max_norm or max_norm <= 0:
        return None
    own = getattr(sam, "max_grad_norm", None)
    if own is not None and float(own) == float(max_norm):
        return None
    check_single_clip(sam, max_norm)
    return float(max_norm)


def _abandon(sam: Any) -> None:
    """Restore the unperturbed weights exactly and drop the update (no base step, gradients cleared), as
    ``step(closure)`` does when its second closure call raises; the optimizer is ready for the next update."""
    restore = getattr(sam, "_restore", None)
    if callable(restore) and getattr(sam, "is_perturbed", False):
        restore()
    sam.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- the engine
@dataclasses.dataclass
class MicroBatch:
    """One micro-batch of the open update: its perturbed forward/backward (the same callable, on the same
    data, as its clean pass) and, with ``rng="replay"``, the generator states before its clean pass."""

    perturbed: Callable[[], Any]
    rng: RngState | None = None


class TwoPassEngine:
    """Runs the updates of one optimizer, one at a time (see the module docstring for the protocol).

    Args:
        optimizer: a two-pass optimizer (:func:`is_two_pass`; a framework's wrapper around ours is
            unwrapped), or a plain one (one pass, clip, step).
        model: the model whose BatchNorm running statistics are frozen in the perturbed passes (default:
            the one bound to the optimizer with ``model=`` / :func:`bind_model`).
        scaler: the fp16 ``GradScaler`` that scaled the losses (both passes are unscaled, an overflow skips
            the update).
        max_grad_norm: the framework's clipping (``gradient_clip_val``, ``args.max_grad_norm``, ...): the
            gradient the base optimizer applies is clipped to it on every step, perturbed or not.
        rng: ``"fresh"`` (default) or ``"replay"`` (module docstring).
        ascent_fraction: sub-batch ascent; default the optimizer's ``ascent_fraction`` (see
            :meth:`clean_view`).
        update_scaler: call ``scaler.update()`` after each update (False where the framework does).
        perturbed_sync: ``perturbed_sync(last)`` -> the context of each perturbed micro-batch (DDP: skip the
            all-reduce on all but the last one).
        measure_norm: record the applied gradient's norm before clipping in :attr:`last_grad_norm` also
            when nothing is clipped (for logging).
    """

    def __init__(
        self,
        optimizer: Any,
        *,
        model: nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
        max_grad_norm: float | None = None,
        rng: str = "fresh",
        ascent_fraction: float | None = None,
        update_scaler: bool = True,
        perturbed_sync: Callable[[bool], contextlib.AbstractContextManager[Any]] | None = None,
        measure_norm: bool = False,
    ) -> None:
        self.optimizer = optimizer
        self.sam = unwrap_two_pass(optimizer) or (optimizer if is_two_pass(optimizer) else None)
        self.model = model if model is not None else bound_model(optimizer)
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.max_grad_norm = _resolve_clip(self.sam, max_grad_norm) if self.sam is not None else max_grad_norm
        self.rng = check_rng_mode(rng)
        self.ascent_fraction = ascent_fraction_of(optimizer, ascent_fraction)
        self.update_scaler = update_scaler
        self.perturbed_sync = perturbed_sync
        self.measure_norm = measure_norm
        self.window: list[MicroBatch] = []
        self.last_grad_norm: Tensor | None = None

    @property
    def perturbs(self) -> bool:
        """Whether the open (or next) update runs the perturbed pass (False for plain optimizers and on
        the unperturbed steps of ``perturb_every > 1``)."""
        return self.sam is not None and bool(getattr(self.sam, "next_step_perturbs", True))

    def clean_view(self, batch: Any) -> Any:
        """The part of ``batch`` the clean pass runs on: its first ``ascent_fraction`` on a perturbed
        update of sub-batch ascent (:func:`slice_batch`), else the whole batch."""
        if self.ascent_fraction >= 1.0 or not self.perturbs:
            return batch
        return slice_batch(batch, self.ascent_fraction)

    def add(self, perturbed: Callable[[], Any]) -> MicroBatch:
        """Open (or extend) the update with a micro-batch whose clean pass runs right after this call (by
        the caller, or by :meth:`clean_pass`); ``perturbed()`` runs its perturbed pass in :meth:`update`."""
        replay = self.rng == "replay" and self.sam is not None
        micro = MicroBatch(perturbed, RngState.capture() if replay else None)
        self.window.append(micro)
        return micro

    def clean_pass(
        self,
        clean: Callable[[], Any],
        perturbed: Callable[[], Any] | None = None,
        context: contextlib.AbstractContextManager[Any] | None = None,
    ) -> Any:
        """:meth:`add` a micro-batch and run its clean forward/backward ``clean()`` now (inside ``context``,
        e.g. DDP's ``no_sync()``); ``perturbed`` defaults to ``clean``. Returns what ``clean()`` returns."""
        self.add(perturbed or clean)
        with context or contextlib.nullcontext():
            return clean()

    def update(self, before_apply: Callable[[], Any] | None = None) -> Tensor | None:
        """Finish the open update (after the clean passes of all its micro-batches): ``first_step``, the
        perturbed passes, clipping of the applied gradient, ``second_step``, ``scaler.update()``. Returns
        the applied gradient's norm before clipping when it was measured (else None). ``before_apply()``
        runs once the applied gradient is in ``p.grad``, before it is clipped (a framework's
        ``on_before_optimizer_step`` hooks)."""
        window, self.window = self.window, []
        if self.sam is None:
            return self._plain_update(before_apply)
        sam, scaler = self.sam, self.scaler
        step_kwargs = {"zero_grad": True, **({"scaler": scaler} if scaler is not None else {})}
        norm = None
        if not self.perturbs:  # perturb_every: first_step takes the base step on the clean gradient
            if before_apply is not None:
                before_apply()
            if self.measure_norm:
                norm = clip_applied_gradient(sam, None, scaler)
            with _optimizer_clips(sam, self.max_grad_norm):
                sam.first_step(**step_kwargs)
        else:
            sam.first_step(**step_kwargs)
        if getattr(sam, "is_perturbed", True):  # other libraries' optimizers always perturb
            try:
                for i, micro in enumerate(window):
                    sync = self.perturbed_sync(i == len(window) - 1) if self.perturbed_sync else None
                    with sync or contextlib.nullcontext(), perturbed_pass(self.model, micro.rng):
                        micro.perturbed()
            except BaseException:
                _abandon(sam)  # a perturbed pass raised (out of memory, a bad batch): never leave w + e
                raise
            if before_apply is not None:
                before_apply()
            if self.max_grad_norm or self.measure_norm:
                norm = clip_applied_gradient(sam, self.max_grad_norm, scaler)
        sam.second_step(**step_kwargs)
        if scaler is not None and self.update_scaler:
            scaler.update()
        self.last_grad_norm = norm
        return norm

    def _plain_update(self, before_apply: Callable[[], Any] | None) -> Tensor | None:
        optimizer, scaler, norm = self.optimizer, self.scaler, None
        if before_apply is not None:
            before_apply()
        if self.max_grad_norm:
            if scaler is not None:
                scaler.unscale_(optimizer)
            params = self.model.parameters() if self.model is not None else _grad_params(optimizer)
            norm = nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            if self.update_scaler:
                scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.last_grad_norm = norm
        return norm
