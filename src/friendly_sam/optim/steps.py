"""The public step protocol of the two-pass optimizers: ``first_step`` / ``second_step`` with torch's step
hooks, ``step(closure)`` (both passes through one closure, GradScaler-aware), and copies.

A mixin of :class:`~friendly_sam.optim.two_pass.TwoPassOptimizer`, whose ``_first_step`` / ``_second_step``
hold the update itself (no hooks: ``step(closure)`` runs them through torch's own step wrapper).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from .amp import calling_grad_scaler
from .engine import ClosurePasses

__all__ = ["StepProtocol"]

# Attributes that never travel with a copy of the optimizer: the bound ``step`` wrapper an LR scheduler
# installs on the instance (it would step the original); hooks are dropped by name below.
_NOT_COPIED = ("step",)


class StepProtocol:
    """first_step / second_step / step(closure) around the optimizer's ``_first_step`` / ``_second_step``."""

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True, scaler: torch.amp.GradScaler | None = None) -> None:
        """Perturb the weights ``w <- w + e`` along the direction built from the clean gradient in ``p.grad``.

        On an unperturbed step (``perturb_every > 1``, :attr:`next_step_perturbs` False) it takes the base
        step itself instead, on the clean gradient (``between="base"``) or on the clean gradient plus the
        stored LookSAM component (``between="looksam"``), clipped to ``max_grad_norm`` if set, and leaves
        :attr:`is_perturbed` False; F-SAM's EMA takes the clean gradient there too. ``zero_grad=False``
        then leaves the gradient the base optimizer applied in ``p.grad``.

        Runs the step pre-hooks (``register_step_pre_hook`` and torch's global ones). Checks the group
        hyperparameters again (a scheduler may have rewritten them): an invalid one raises ValueError
        naming the group, the value and its range, before anything changes.

        Args:
            zero_grad: set the gradients to ``None`` afterwards, ready for the second backward pass
                (default). With ``False`` the clean gradient is left in ``p.grad`` untouched (at the cost
                of a temporary copy), and the second backward pass accumulates onto it.
            scaler: the ``torch.amp.GradScaler`` that scaled the loss. The clean gradients are unscaled
                first (recorded by the scaler against this wrapper, so ``scaler.update()`` lowers the scale
                when they overflow); if they hold inf/nan, nothing is perturbed, no state changes and
                :meth:`second_step` skips the base step.

        Raises:
            FloatingPointError: the clean gradient holds inf/nan and no scaler was given, or the
                perturbation ``rho / ||d||`` overflows a parameter's dtype.
            Any exception leaves the weights as they were (the step is transactional) and, short of
            ASAM's second norm, the optimizer state too (``between="looksam"``: the stored component is
            dropped on a perturbed step that raises; the next unperturbed steps are plain base steps).
        """
        if self.is_perturbed or self.phase.value == "stepped":
            raise RuntimeError("first_step() called twice: call second_step() to finish the step first")
        self._run_step_hooks(pre=True)
        self._first_step(zero_grad, scaler)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True, scaler: torch.amp.GradScaler | None = None) -> None:
        """Restore the weights exactly, then let the base optimizer step with the perturbed gradient.

        After the :meth:`first_step` of an unperturbed step it only finishes the step (counter, hooks,
        ``zero_grad``): the gradient then in ``p.grad`` is ignored.

        The perturbed gradient is checked like the clean one; with ``max_grad_norm`` set it is clipped
        (after unscaling, with a scaler) right before the base step: this is the gradient the base
        optimizer applies. Runs the step post-hooks at the end.

        Args:
            zero_grad: set gradients to ``None`` after the base step (default).
            scaler: the ``torch.amp.GradScaler``; the base step goes through ``scaler.step`` (which unscales,
                and skips the step on inf/nan, recording the overflow). Call ``scaler.update()`` afterwards.

        Raises:
            FloatingPointError: the perturbed gradient holds inf/nan and no scaler was given. The weights
                are restored and the base optimizer has not stepped (F-SAM's EMA has already taken this
                step's clean gradient, which was finite).
        """
        self._second_step(zero_grad, scaler)
        self._run.grads_from_step = False
        self._run_step_hooks(pre=False)

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Any] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> Any:
        """One full step with a closure that computes the loss and calls ``backward()``. It is called twice:
        at ``w`` (the clean pass), then at ``w + e``; once on the unperturbed steps of ``perturb_every > 1``
        (whose applied gradient it leaves in ``p.grad``).

        Returns the loss of the first (clean) pass. The gradients of the second pass are left in ``p.grad``,
        as with any torch optimizer. Step hooks run once.

        Gradients: each pass starts from no gradient whether or not the closure zeroes them (the optimizer
        clears what its previous step left before the first call, and the clean gradient before the second),
        so a closure that never calls ``zero_grad()`` gives the same step. A non-zero gradient that did not
        come from our previous step (``loss.backward(); opt.step(closure)``, the davda54/sam idiom) is
        refused: it would be added to the clean gradient.

        ``scaler`` (ours) or ``grad_scaler`` (what ``torch.amp.GradScaler.step(optimizer, closure)`` passes,
        e.g. from accelerate's fp16 ``AcceleratedOptimizer.step(closure)``): both passes are unscaled and
        checked; an overflow in either skips the base step and is recorded for ``scaler.update()``.
        """
        if grad_scaler is None and (hasattr(self, "found_inf") or hasattr(self, "grad_scale")):
            grad_scaler = calling_grad_scaler(type(self).__name__)
        if grad_scaler is not None:
            if scaler is not None and scaler is not grad_scaler:
                raise ValueError("step() got two different GradScalers (scaler= and grad_scaler=)")
            scaler = grad_scaler
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure that recomputes the loss and calls backward(), "
                "because the perturbed gradient needs a second forward/backward pass; or call first_step() "
                "and second_step() around your own two passes"
            )
        self._refuse_foreign_gradient()
        passes = ClosurePasses(
            self, closure
        )  # BatchNorm frozen and RNG replayed in the perturbed call (engine)
        self.zero_grad(set_to_none=True)  # what our last step left: a closure that does not zero stays right
        try:
            with torch.enable_grad():
                loss = closure()
            perturbs = self.next_step_perturbs
            # unperturbed step: one closure call; the gradient the base step applied stays in p.grad
            self._first_step(zero_grad=perturbs, scaler=scaler)
            if self.is_perturbed:
                with torch.enable_grad(), passes.perturbed():
                    closure()
            self._second_step(zero_grad=False, scaler=scaler)
        except BaseException:
            if self.is_perturbed:  # the second closure raised: never leave w + e behind
                self._restore()
            raise
        self._run.grads_from_step = True
        passes.finished(self)
        return loss

    def _refuse_foreign_gradient(self) -> None:
        """davda54/sam and pytorch-optimizer expect ``loss.backward(); opt.step(closure)`` (the closure runs
        the second pass only). Here the closure runs both passes, so a gradient computed before ``step()``
        would be added to the clean one (a silently wrong direction) unless the closure zeroes it. Refuse
        a non-zero gradient that the previous ``step(closure)`` did not leave (checked until the first
        such step: one host sync, once)."""
        if self._run.grads_from_step:
            return
        grads = [p.grad for p in self._params() if p.grad is not None]
        if grads and bool(torch.stack([g.detach().abs().amax().to(torch.float32) for g in grads]).amax() > 0):
            raise RuntimeError(
                f"{type(self).__name__}.step(closure) found gradients computed before it. Unlike davda54/sam "
                "and pytorch-optimizer, step(closure) runs BOTH passes through the closure (which computes "
                "the loss and calls backward()): drop the backward before step(), or call opt.zero_grad() "
                "first. To accumulate gradients over micro-batches, use first_step()/second_step() around "
                "your own passes"
            )

    def _run_step_hooks(self, pre: bool) -> None:
        """torch's step hooks (this optimizer's and the global ones), as ``Optimizer.step`` runs them; not
        inside :meth:`step`, whose torch wrapper runs them itself (once per full step either way)."""
        if pre:
            hooks = chain(_global_optimizer_pre_hooks.values(), self._optimizer_step_pre_hooks.values())
        else:
            self._optimizer_step_code()
            hooks = chain(self._optimizer_step_post_hooks.values(), _global_optimizer_post_hooks.values())
        for hook in hooks:
            if hook(self, (self,), {}) is not None:
                raise RuntimeError(
                    f"a step pre-hook returned new arguments for {type(self).__name__}: first_step()/"
                    "second_step() have no step arguments to replace; return None from the hook"
                )

    # ----------------------------------------------------------------- copies
    def __getstate__(self) -> dict[str, Any]:
        """Everything (base optimizer, buffers, hyperparameters) but hooks: ``copy.deepcopy``, ``pickle``
        and ``torch.save`` give a working optimizer. Copy the model and the optimizer in ONE call
        (``copy.deepcopy((model, opt))``) so that the copy's parameters are the copied model's."""
        if self.phase.value != "idle":
            raise RuntimeError("cannot copy the optimizer between first_step() and second_step()")
        if self.process_group is not None or self.replica_group is not None:
            raise TypeError(
                f"cannot copy or pickle a {type(self).__name__} bound to a process group: build a new one "
                "and load_state_dict(opt.state_dict())"
            )
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in _NOT_COPIED and not (k.startswith("_optimizer_") and k.endswith("_hooks"))
        }
