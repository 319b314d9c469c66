"""friendly-sam: Friendly Sharpness-Aware Minimization (F-SAM), SAM and ASAM for PyTorch.

The top-level names are loaded on first use (PEP 562): ``from friendly_sam import FriendlySAM`` imports
``friendly_sam.optim`` (and torch) then, while ``import friendly_sam.jax`` or ``friendly_sam.__version__``
imports no torch at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ below loads these
    from .optim import SAM, FriendlySAM, TwoPassOptimizer, frozen_bn_stats

__version__ = "0.1.0"

# public name -> the submodule (relative to this package) that defines it
_LAZY_NAMES: dict[str, str] = {
    "FriendlySAM": ".optim",
    "SAM": ".optim",
    "TwoPassOptimizer": ".optim",
    "frozen_bn_stats": ".optim",
}

__all__ = ["FriendlySAM", "SAM", "TwoPassOptimizer", "frozen_bn_stats", "__version__"]


def __getattr__(name: str) -> Any:
    """Load a top-level name from its submodule on first access, then keep it in the module's namespace."""
    try:
        submodule = _LAZY_NAMES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(submodule, __name__), name)
    globals()[name] = value  # later lookups bypass __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))
