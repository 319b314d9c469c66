"""Sub-batch ascent (``ascent_fraction``): which part of a batch the clean pass runs on."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .passes import unwrap_two_pass


# ----------------------------------------------------------------------------- sub-batch ascent
def ascent_fraction_of(optimizer: Any, given: float | None = None) -> float:
    """The ascent fraction of an update: ``given`` (an entry point's own argument) or the optimizer's
    ``ascent_fraction`` attribute (default 1.0); both set and different is an error."""
    own = getattr(unwrap_two_pass(optimizer) or optimizer, "ascent_fraction", None)
    if given is not None and own is not None and float(own) != 1.0 and float(given) != float(own):
        raise ValueError(
            f"ascent_fraction={given!r} conflicts with the optimizer's ascent_fraction={own!r}: set it in one place"
        )
    fraction = float(given if given is not None else own if own is not None else 1.0)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"ascent_fraction={fraction!r}: it must be in (0, 1]")
    return fraction


def ascent_size(batch_size: int, fraction: float) -> int:
    """Samples of a batch of ``batch_size`` the clean pass of sub-batch ascent runs on."""
    return max(1, math.ceil(fraction * batch_size))


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, Tensor):
        return len(batch) if batch.dim() else None
    values = (
        batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    )
    for value in values:
        size = _batch_size(value)
        if size is not None:
            return size
    return None


def slice_batch(batch: Any, fraction: float) -> Any:
    """The first ``ascent_size(n, fraction)`` samples of a batch: tensors (sliced along dim 0) in any nesting
    of tuples, lists and dicts; other leaves are kept. Refuses a batch with no tensor or tensors of
    different lengths (the engine cannot know what a sample is)."""
    size = _batch_size(batch)
    if size is None:
        raise TypeError(
            f"ascent_fraction < 1 needs a batch of tensors to slice; got {type(batch).__name__}. "
            "Use ascent_fraction=1, or pass the batch as tensors (or tuples/lists/dicts of them)"
        )
    n = ascent_size(size, fraction)

    def cut(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim():
            if len(value) != size:
                raise ValueError(
                    f"ascent_fraction < 1: the batch holds tensors of {size} and {len(value)} samples; "
                    "the engine cannot tell which dimension is the batch"
                )
            return value[:n]
        if isinstance(value, Mapping):
            return type(value)({k: cut(v) for k, v in value.items()})
        if isinstance(value, (list, tuple)) and not isinstance(value, str):
            items = [cut(v) for v in value]
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        return value

    return cut(batch)
