"""timm: ``register_timm()`` adds ``sam``, ``asam``, ``fsam`` and ``afsam`` to timm's optimizer registry.

After ``register_timm()``, ``timm.optim.create_optimizer_v2(model, "fsam", lr=..., weight_decay=...,
rho=..., sigma=..., lmbda=...)`` builds a :class:`~friendly_sam.FriendlySAM` over timm's parameter groups
(weight decay off for biases and norm layers, layer decay, ``param_group_fn``); timm's schedulers act on
its ``param_groups`` as on any optimizer. The base optimizer is ``base_optimizer=`` (a timm optimizer
name such as ``"sgd"`` (timm's default, Nesterov momentum), ``"momentum"``, ``"adamw"``, or an optimizer
class); timm's ``momentum``/``eps``/``betas`` arguments reach it when it takes them.

The step is still two passes: call ``first_step()``/``second_step()`` around your own two backward passes
(or ``step(closure)``). timm's ``NativeScaler`` calls ``optimizer.step()`` once, without a closure: for
fp16 drive the steps with a ``torch.amp.GradScaler`` as ``first_step(scaler=s)``/``second_step(scaler=s)``.
The ``lookahead_`` prefix is not supported (Lookahead would call ``step()`` without a closure).
timm is imported only when ``register_timm()`` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..optim import SAM, FriendlySAM, TwoPassOptimizer

# name -> (class, adaptive, description)
TIMM_OPTIMIZERS: dict[str, tuple[type[TwoPassOptimizer], bool, str]] = {
    "sam": (SAM, False, "friendly_sam SAM (sharpness-aware minimization) around a base optimizer"),
    "asam": (SAM, True, "friendly_sam ASAM (adaptive SAM) around a base optimizer"),
    "fsam": (FriendlySAM, False, "friendly_sam Friendly-SAM (F-SAM, CVPR 2024) around a base optimizer"),
    "afsam": (FriendlySAM, True, "friendly_sam adaptive Friendly-SAM around a base optimizer"),
}


def _resolve_base(registry: Any, base: Any, kwargs: dict[str, Any]) -> type[torch.optim.Optimizer]:
    """The base optimizer class; for a timm name, its registry defaults are applied to ``kwargs`` and
    the arguments it does not take (momentum, eps, betas) are dropped, as timm does for its own names."""
    if not isinstance(base, str):
        return base
    if base.lower() in TIMM_OPTIMIZERS:
        raise ValueError(f"base_optimizer={base!r} is itself a two-pass optimizer; use e.g. 'sgd' or 'adamw'")
    info = registry.get_optimizer_info(base)
    for key, value in (info.defaults or {}).items():
        kwargs.setdefault(key, value)
    if not info.has_momentum:
        kwargs.pop("momentum", None)
    if not info.has_eps:
        kwargs.pop("eps", None)
    if not info.has_betas:
        kwargs.pop("betas", None)
    return registry.get_optimizer_class(info, bind_defaults=False)


def _builder(
    registry: Any, sam_class: type[TwoPassOptimizer], adaptive: bool
) -> Callable[..., TwoPassOptimizer]:
    def build(params: Any, base_optimizer: Any = "sgd", **kwargs: Any) -> TwoPassOptimizer:
        kwargs.setdefault("adaptive", adaptive)
        base_cls = _resolve_base(registry, base_optimizer, kwargs)
        return sam_class(params, base_cls, **kwargs)

    build.__name__ = sam_class.__name__
    build._friendly_sam = True  # type: ignore[attr-defined]  # recognised on re-registration
    return build


def register_timm(registry: Any = None) -> list[str]:
    """Register ``sam``, ``asam``, ``fsam``, ``afsam`` in timm's optimizer registry (the default registry
    that ``create_optimizer_v2`` uses, or ``registry``). Idempotent. Returns the registered names.

    Raises:
        ImportError: timm is not installed, or too old to have an optimizer registry (timm >= 1.0.12).
    """
    try:
        from timm.optim import OptimInfo, _optim_factory
    except ImportError as err:
        raise ImportError(
            f"register_timm() needs timm >= 1.0.12 with its optimizer registry (pip install timm): {err}"
        ) from err
    registry = _optim_factory.default_registry if registry is None else registry
    existing = set(registry.list_optimizers())
    for name, (sam_class, adaptive, description) in TIMM_OPTIMIZERS.items():
        if name in existing:
            if getattr(registry.get_optimizer_info(name).opt_class, "_friendly_sam", False):
                continue  # registered by an earlier call
            raise ValueError(
                f"timm already has an optimizer named {name!r} that is not friendly_sam's; not overwriting it"
            )
        info = OptimInfo(
            name=name,
            opt_class=_builder(registry, sam_class, adaptive),  # type: ignore[arg-type]
            description=description,
            has_eps=True,  # passed through to the base optimizer when it takes them (see _resolve_base)
            has_momentum=True,
            has_betas=True,
        )
        registry.register(info)
    return list(TIMM_OPTIMIZERS)


__all__ = ["TIMM_OPTIMIZERS", "register_timm"]
