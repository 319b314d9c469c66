"""Checkpoints of the two-pass optimizers: ``state_dict`` / ``load_state_dict`` (own state, the base optimizer's,
the step counter), loading every format we wrote (``migration.py``).

A mixin of :class:`~friendly_sam.optim.two_pass.TwoPassOptimizer`.
"""

from __future__ import annotations

from typing import Any

from .migration import STATE_FORMAT, check_base_state, upgrade_groups

__all__ = ["StateDictMixin"]


class StateDictMixin:
    """state_dict / load_state_dict of a two-pass optimizer."""

    def _meta(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "base_class": type(self.base_optimizer).__name__,
            "format": STATE_FORMAT,
            "max_grad_norm": self.max_grad_norm,
            "steps": self._run.steps,  # the period's position: resuming mid-period perturbs on the same steps
            "perturb_every": self.perturb_every,
            "between": self.between,
            "component_valid": self._run.component_valid,
            "ascent_fraction": self.ascent_fraction,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly: own state, base optimizer state, hyperparameters."""
        if self.phase.value != "idle":
            raise RuntimeError(
                "state_dict() between first_step() and second_step(): the step is not finished (the weights "
                "may be perturbed right now); save after second_step()"
            )
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        state["two_pass"] = self._meta()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        meta = state_dict.get("two_pass")
        if meta is None or "base_optimizer" not in state_dict:
            raise ValueError(
                f"not a {type(self).__name__} state dict (no 'two_pass'/'base_optimizer' entries): it was "
                "probably saved from a plain torch optimizer or another SAM library"
            )
        if meta["class"] != type(self).__name__:
            raise ValueError(
                f"state dict was saved from {meta['class']}, cannot load it into {type(self).__name__}"
            )
        if self.phase.value != "idle":
            raise RuntimeError("load_state_dict() between first_step() and second_step()")
        check_base_state(self, meta, state_dict["base_optimizer"])
        own = {k: v for k, v in state_dict.items() if k not in ("base_optimizer", "two_pass")}
        self.base_optimizer.load_state_dict(state_dict["base_optimizer"])
        super().load_state_dict(own)
        self.base_optimizer.param_groups = self.param_groups
        self.max_grad_norm = meta["max_grad_norm"]
        # perturb_every/between/looksam_alpha/ascent_fraction are this optimizer's construction arguments;
        # the counter and the LookSAM component's validity travel (format < 3: every step perturbed)
        self._run.steps = int(meta.get("steps", 0))
        self._run.component_valid = bool(meta.get("component_valid", False)) and self.between == "looksam"
        upgrade_groups(self.param_groups, self.hyperparameter_defaults())
