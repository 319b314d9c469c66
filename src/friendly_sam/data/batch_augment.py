"""Pad-crop, flip and Cutout on whole uint8 ``(N, C, H, W)`` batches: the CIFAR / MNIST recipe.

One :class:`BatchAugment` call does, for the whole batch at once and without Python loops over
images:

1. random crop with zero padding (torchvision ``RandomCrop(size, padding=p)``: pad by ``p`` with
   black pixels, take an ``H x W`` window at a uniformly random offset in ``[0, 2p]``),
2. random horizontal flip (p = 0.5),
3. conversion to float32 in [0, 1] and normalisation ``(x - mean) / std``,
4. Cutout (DeVries & Taylor 2017, as in the SAM / F-SAM recipes): with probability ``cutout_p``,
   a ``cutout_size`` square centred on a uniformly random pixel is set to ``cutout_value``
   (0 = the mean colour, since it is applied after normalisation); the square may extend past
   the border and is clipped there.

Crop and flip are one ``gather`` with computed source indices. All randomness comes from an
explicit ``torch.Generator`` (on the CPU, whatever the data's device), so a batch's augmentation
is reproducible: :meth:`BatchAugment.sample` draws the parameters, :meth:`BatchAugment.apply`
applies them (the :class:`~friendly_sam.data.augment.Augmentation` protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["AugmentParams", "BatchAugment", "to_float"]


@dataclass(frozen=True)
class AugmentParams:
    """Per-image random choices of one batch (int64 / bool tensors of shape ``(N,)``, CPU).

    ``crop_top`` / ``crop_left`` index the padded image (in ``[0, 2 * padding]``); ``cut_y`` /
    ``cut_x`` are the Cutout centres. Fields of disabled steps are ``None``.
    """

    crop_top: torch.Tensor | None = None
    crop_left: torch.Tensor | None = None
    flip: torch.Tensor | None = None
    cut: torch.Tensor | None = None
    cut_y: torch.Tensor | None = None
    cut_x: torch.Tensor | None = None


def _channel_tensor(values: Sequence[float] | None, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    t = torch.as_tensor(list(values), dtype=torch.float32).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    return t


def to_float(
    x: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (float input is taken as already in [0, 1]), then normalised."""
    return BatchAugment(mean=mean, std=std).apply(x, AugmentParams())


class BatchAugment:
    """Random crop + horizontal flip + normalisation + Cutout on a whole batch (see module docstring).

    Args:
        crop_padding: zero padding of the random crop (0 disables it; the paper uses 4 for 32x32).
        flip: random horizontal flips (leave off for digits).
        cutout_size: side of the Cutout square (0 disables it; the paper recipe is 16).
        cutout_p: probability of applying Cutout to an image (paper recipe: 0.5).
        mean: per-channel mean for normalising the [0, 1]-scaled images (``None``: no normalisation).
        std: per-channel standard deviation for that normalisation (``None``: none).
        cutout_value: value written into the Cutout square, in output (normalised) units.

    With every step disabled the call is a plain uint8 -> float conversion (+ normalisation):
    the evaluation transform.
    """

    def __init__(
        self,
        *,
        crop_padding: int = 0,
        flip: bool = False,
        cutout_size: int = 0,
        cutout_p: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        cutout_value: float = 0.0,
    ) -> None:
        if int(crop_padding) != crop_padding or crop_padding < 0:
            raise ValueError(f"crop_padding must be a non-negative integer, got {crop_padding!r}")
        if int(cutout_size) != cutout_size or cutout_size < 0:
            raise ValueError(f"cutout_size must be a non-negative integer, got {cutout_size!r}")
        if not 0.0 <= cutout_p <= 1.0:
            raise ValueError(f"cutout_p must be in [0, 1], got {cutout_p!r}")
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.cutout_size = int(cutout_size)
        self.cutout_p = float(cutout_p)
        self.cutout_value = float(cutout_value)
        self.mean = _channel_tensor(mean, "mean")
        self.std = _channel_tensor(std, "std")
        if self.std is not None and bool((self.std <= 0).any()):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")

    @classmethod
    def for_dataset(
        cls,
        dataset: Any,
        train: bool = True,
        *,
        crop: bool = True,
        flip: bool | None = None,
        cutout: bool | None = None,
    ) -> BatchAugment:
        """The recipe of ``fsam train`` for a built-in set (anything with ``name``, ``mean``, ``std`` and
        optionally ``image_size``, default 32).

        Training: crop with padding 4 (3 at 28x28 and below), horizontal flips and Cutout (16x16, 8x8 at
        28x28, p=0.5) by default for CIFAR only, not for digits and clothes. Evaluation (``train=False``):
        normalisation only.
        """
        if not train:
            return cls(mean=dataset.mean, std=dataset.std)
        cifar = str(getattr(dataset, "name", "")).startswith("cifar")
        small = int(getattr(dataset, "image_size", 32)) <= 28
        use_cutout = cifar if cutout is None else cutout
        return cls(
            crop_padding=(3 if small else 4) if crop else 0,
            flip=cifar if flip is None else flip,
            cutout_size=(8 if small else 16) if use_cutout else 0,
            cutout_p=0.5,
            mean=dataset.mean,
            std=dataset.std,
        )

    @property
    def is_random(self) -> bool:
        """Whether the transform draws random numbers at all."""
        return self.crop_padding > 0 or self.flip or (self.cutout_size > 0 and self.cutout_p > 0)

    def sample(
        self, n: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> AugmentParams:
        """Draw the random choices for ``n`` images of size ``height x width``.

        The draws happen in a fixed order (crop, flip, Cutout) from ``generator`` (CPU).
        """
        g = generator
        top = left = flip = cut = cy = cx = None
        if self.crop_padding > 0:
            top = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=g)
            left = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=g)
        if self.flip:
            flip = torch.rand(n, generator=g) < 0.5
        if self.cutout_size > 0 and self.cutout_p > 0:
            cut = torch.rand(n, generator=g) < self.cutout_p
            cy = torch.randint(0, height, (n,), generator=g)
            cx = torch.randint(0, width, (n,), generator=g)
        return AugmentParams(crop_top=top, crop_left=left, flip=flip, cut=cut, cut_y=cy, cut_x=cx)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch ``x`` (uint8 or [0, 1] float, ``(N, C, H, W)``) -> float32 ``(N, C, H, W)``."""
        if x.dim() != 4:
            raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
        params = (
            self.sample(x.shape[0], x.shape[2], x.shape[3], generator) if self.is_random else AugmentParams()
        )
        return self.apply(x, params)

    def apply(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply given random choices (from :meth:`sample`) to the batch ``x``."""
        if x.dim() != 4:
            raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        dev = x.device  # parameters go there non-blocking: a blocking copy to a GPU waits for its queue
        original = x
        if params.crop_top is not None or params.flip is not None:
            x = self._crop_flip(x, params)
        # Never modify the caller's tensor in place (a float32 input would otherwise be aliased).
        out = x.to(torch.float32, copy=x is original)
        if x.dtype == torch.uint8:
            out = out.div_(255.0)
        if self.mean is not None and self.std is not None:
            if self.mean.numel() not in (1, c) or self.std.numel() not in (1, c):
                raise ValueError(
                    f"mean/std have {self.mean.numel()}/{self.std.numel()} values for {c} channels"
                )
            mean = self.mean.to(dev, non_blocking=True).view(1, -1, 1, 1)
            std = self.std.to(dev, non_blocking=True).view(1, -1, 1, 1)
            out = out.sub_(mean).div_(std)
        if params.cut is not None:
            assert params.cut_y is not None and params.cut_x is not None
            half = self.cutout_size // 2
            rows = torch.arange(h, device=dev)
            cols = torch.arange(w, device=dev)
            y0 = (params.cut_y.to(dev, non_blocking=True) - half).view(n, 1)
            x0 = (params.cut_x.to(dev, non_blocking=True) - half).view(n, 1)
            in_r = (rows >= y0) & (rows < y0 + self.cutout_size)  # (N, H); clipping is implicit
            in_c = (cols >= x0) & (cols < x0 + self.cutout_size)  # (N, W)
            mask = (in_r[:, :, None] & in_c[:, None, :] & params.cut.to(dev, non_blocking=True).view(n, 1, 1))[:, None]
            # Multiplying by a 0/1 float mask is several times faster than masked_fill on CPU.
            out = out.mul_((~mask).to(out.dtype))
            if self.cutout_value != 0.0:
                out = out.add_(mask.to(out.dtype), alpha=self.cutout_value)
        return out

    def _crop_flip(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        # Pad once with zeros, then read output pixel (i, j) from padded pixel (top + i, left + j'),
        # j' = W-1-j when flipped: crop and flip become a single gather (no per-image loop, no masks).
        n, c, h, w = x.shape
        dev = x.device
        p = self.crop_padding if params.crop_top is not None else 0
        if p:
            x = F.pad(x, (p, p, p, p))
        wp = w + 2 * p
        rows = torch.arange(h, device=dev).view(1, h)
        cols = torch.arange(w, device=dev).view(1, w)
        if params.flip is not None:
            cols = torch.where(params.flip.to(dev, non_blocking=True).view(n, 1), (w - 1) - cols, cols)
        if params.crop_top is not None and params.crop_left is not None:
            rows = rows + params.crop_top.to(dev, non_blocking=True).view(n, 1)
            cols = cols + params.crop_left.to(dev, non_blocking=True).view(n, 1)
        flat = (rows.expand(n, h)[:, :, None] * wp + cols.expand(n, w)[:, None, :]).view(n, 1, h * w)
        # an explicit size, not -1: a rank's empty share of a short last batch has no rows to infer it from
        return x.reshape(n, c, x.shape[2] * wp).gather(2, flat.expand(n, c, h * w)).view(n, c, h, w)

    def __repr__(self) -> str:
        parts = [f"crop_padding={self.crop_padding}", f"flip={self.flip}"]
        if self.cutout_size:
            parts.append(f"cutout_size={self.cutout_size}, cutout_p={self.cutout_p}")
        if self.mean is not None and self.std is not None:
            parts.append(f"mean={tuple(round(v, 4) for v in self.mean.tolist())}")
            parts.append(f"std={tuple(round(v, 4) for v in self.std.tolist())}")
        return f"BatchAugment({', '.join(parts)})"
