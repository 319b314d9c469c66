"""The base optimizer's update through torch's functional forms, for a train step compiled whole.

Under ``torch.compile(fullgraph=True)`` of a whole two-pass step (both backward passes inside the compiled
region), torch's own ``Optimizer.step`` cannot be traced: dynamo intercepts ``_init_group`` and refuses it
while the parameters carry pending mutations (the in-graph backward wrote ``p.grad``), and torch's step
breaks the graph on purpose. For the bases listed in :data:`FUNCTIONAL` (exactly ``torch.optim.SGD``,
``Adam`` and ``AdamW``, not subclasses: a subclass may change ``step``) the capturable second step therefore
gathers the parameter, gradient and state lists itself, as ``_init_group`` does, and calls torch's
functional update (``torch.optim.sgd.sgd``, ``torch.optim.adam.adam``, ``torch.optim.adamw.adamw``) with
the group's hyperparameters: the same kernels, so the same numbers.

The state is created the way ``_init_group`` creates it, before any compiled call where that is exact
(:func:`init_state_`, run eagerly at construction and at each eager step): Adam's zeros and step counter
always; SGD's momentum buffer as zeros when ``dampening == 0`` (torch's first step copies the gradient into
it, ``0 * momentum + g`` is the same). SGD with momentum and ``dampening != 0`` has no exact zero state:
its buffer is created by torch's first step: until it exists (:func:`state_ready`), a compiled step traces
torch's own ``step`` instead, which works when ``second_step`` is compiled on its own, while a whole step
compiled with its backward is refused by dynamo ("pending mutation on parameter"): take that first step
eagerly. The same holds for a parameter group added after construction until an eager step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim import adam as adam_module
from torch.optim import adamw as adamw_module
from torch.optim import sgd as sgd_module

__all__ = ["FUNCTIONAL", "functional_step", "init_state_", "is_compiling", "state_ready", "supports_functional"]


def is_compiling() -> bool:
    """Whether torch.compile is tracing this call (``torch.compiler.is_compiling``, torch >= 2.3; dynamo's own
    flag before)."""
    check = getattr(torch.compiler, "is_compiling", None)
    return check() if check is not None else torch._dynamo.is_compiling()


def _accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Only the keywords this torch version's functional form takes (torch >= 2.1 differ in a few)."""
    names = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in names}


def _sgd_lists(base: Optimizer, group: dict[str, Any], params: list[Tensor]) -> dict[str, Any]:
    buffers = [base.state[p].get("momentum_buffer") for p in params] if group["momentum"] != 0 else []
    return {"momentum_buffer_list": buffers}


def _sgd_kwargs(group: dict[str, Any]) -> dict[str, Any]:
    keys = ("weight_decay", "momentum", "lr", "dampening", "nesterov", "maximize", "foreach", "fused")
    return {**{k: group.get(k) for k in keys}, "has_sparse_grad": False}  # sparse gradients are refused


def _sgd_call(params: list[Tensor], grads: list[Tensor], lists: dict[str, Any], kwargs: dict[str, Any]) -> None:
    sgd_module.sgd(params, grads, lists["momentum_buffer_list"], **_accepted(sgd_module.sgd, kwargs))


def _adam_lists(base: Optimizer, group: dict[str, Any], params: list[Tensor]) -> dict[str, Any]:
    states = [base.state[p] for p in params]
    return {
        "exp_avgs": [s["exp_avg"] for s in states],
        "exp_avg_sqs": [s["exp_avg_sq"] for s in states],
        "max_exp_avg_sqs": [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
        "state_steps": [s["step"] for s in states],
    }


def _adam_kwargs(group: dict[str, Any]) -> dict[str, Any]:
    keys = ("amsgrad", "lr", "weight_decay", "eps", "maximize", "foreach", "capturable", "differentiable",
            "fused", "decoupled_weight_decay")
    beta1, beta2 = group["betas"]
    return {**{k: group.get(k) for k in keys if k in group}, "beta1": beta1, "beta2": beta2}


def _adamw_kwargs(group: dict[str, Any]) -> dict[str, Any]:
    return {**_adam_kwargs(group), "decoupled_weight_decay": True}


def _adam_call(params: list[Tensor], grads: list[Tensor], lists: dict[str, Any], kwargs: dict[str, Any]) -> None:
    fn = adam_module.adam
    if kwargs.get("decoupled_weight_decay") and "decoupled_weight_decay" not in inspect.signature(fn).parameters:
        fn = adamw_module.adamw  # torch < 2.6: AdamW has its own functional form
    kwargs = {**kwargs, "has_complex": any(torch.is_complex(p) for p in params)}
    fn(params, grads, lists["exp_avgs"], lists["exp_avg_sqs"], lists["max_exp_avg_sqs"], lists["state_steps"],
       **_accepted(fn, kwargs))


# type -> (state lists of a group, hyperparameters of a group, the functional call)
FUNCTIONAL: dict[type, tuple[Callable, Callable, Callable]] = {
    SGD: (_sgd_lists, _sgd_kwargs, _sgd_call),
    Adam: (_adam_lists, _adam_kwargs, _adam_call),
    AdamW: (_adam_lists, _adamw_kwargs, _adam_call),
}


def supports_functional(base: Optimizer) -> bool:
    """True when the whole compiled step can take ``base``'s update through its functional form."""
    return type(base) in FUNCTIONAL and not any(g.get("differentiable") for g in base.param_groups)


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32  # as torch's Adam


def _init_adam_state(group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
    on_device = group.get("capturable") or group.get("fused")
    state["step"] = (
        torch.zeros((), dtype=torch.float32 if group.get("fused") else _scalar_dtype(), device=p.device)
        if on_device
        else torch.tensor(0.0, dtype=_scalar_dtype(), device="cpu")
    )
    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if group["amsgrad"]:
        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def init_state_(base: Optimizer) -> None:
    """Create ``base``'s missing state as its first step would, where zeros are exact (module docstring)."""
    if not supports_functional(base):
        return
    for group in base.param_groups:
        for p in group["params"]:
            if not p.requires_grad or base.state.get(p):
                continue
            if isinstance(base, (Adam, AdamW)):  # not one class before torch 2.6
                _init_adam_state(group, p, base.state[p])
            elif group["momentum"] != 0 and group["dampening"] == 0:
                base.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def state_ready(base: Optimizer) -> bool:
    """Whether every parameter that the update reads state of has it (else the compiled step traces torch's
    own ``step``, whose ``_init_group`` creates it)."""
    return not any(
        p.requires_grad and not base.state.get(p) and (isinstance(base, (Adam, AdamW)) or group["momentum"] != 0)
        for group in base.param_groups
        for p in group["params"]
    )


def functional_step(base: Optimizer) -> None:
    """``base.step()`` for the types of :data:`FUNCTIONAL`, over lists gathered here (its state must exist)."""
    lists_of, kwargs_of, call = FUNCTIONAL[type(base)]
    for group in base.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            call(params, [p.grad for p in params], lists_of(base, group, params), kwargs_of(group))
