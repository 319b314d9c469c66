"""The protocol every batched augmentation follows, and what is built on it.

An augmentation works on a whole uint8 (or [0, 1] float) ``(N, C, H, W)`` batch and returns float32
images. Its randomness is split in two steps so that a batch's choices can be drawn once and applied
to any part of it:

- :meth:`Augmentation.sample` draws the per-image random choices of ``n`` images from an explicit CPU
  generator, in a fixed order, into a frozen dataclass whose tensor fields have one row per image
  (fields of disabled steps are ``None``; nothing is drawn for them);
- :meth:`Augmentation.apply` applies such choices to a batch; ``__call__(x, generator)`` is
  ``apply(x, sample(len(x), H, W, generator))``.

Two implement it: :class:`~friendly_sam.data.BatchAugment` (pad-crop, flip, Cutout: the CIFAR / MNIST
recipe) and :class:`~friendly_sam.data.ResizedCropAugment` (random-resized-crop or centre crop: image
folders). Because image ``i``'s choices do not depend on the other images, :func:`augment_rows` augments
only some rows of a global batch and gets exactly the rows the whole batch would have given.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Augmentation", "augment_rows", "slice_params"]


@runtime_checkable
class Augmentation(Protocol):
    """A batched, reproducible augmentation (see the module docstring)."""

    @property
    def is_random(self) -> bool:
        """Whether :meth:`sample` draws random numbers at all."""
        ...

    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> Any:
        """The random choices of ``n`` images of ``height x width`` (a frozen dataclass of ``(n,)`` tensors)."""
        ...

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        """Apply choices from :meth:`sample` to the batch ``x``; float32 out."""
        ...

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


def slice_params(params: Any, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of the random choices returned by :meth:`Augmentation.sample`."""
    changes = {
        f.name: getattr(params, f.name)[lo:hi]
        for f in dataclasses.fields(params)
        if isinstance(getattr(params, f.name), torch.Tensor)
    }
    return dataclasses.replace(params, **changes)


def augment_rows(
    augment: Augmentation | None, x: torch.Tensor, generator: torch.Generator, total: int, lo: int
) -> torch.Tensor:
    """Rows ``lo : lo + len(x)`` of ``augment(whole_batch, generator)`` for a global batch of ``total``
    images, computed from those rows alone (the random choices are drawn for all ``total`` images,
    then sliced). ``None``: uint8 scaled to [0, 1] floats."""
    if augment is None:
        return x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
    params = augment.sample(total, x.shape[2], x.shape[3], generator)
    return augment.apply(x, slice_params(params, lo, lo + x.shape[0]))
