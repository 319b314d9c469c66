"""ImageNet-style batched augmentation of square base images: random-resized-crop + flip, or centre crop.

:class:`ResizedCropAugment` works on whole uint8 ``(N, C, B, B)`` batches of base images (see
:mod:`.image_decode`) and returns float32 ``(N, C, S, S)``, normalised:

- training (``random_crop=True``): torchvision's ``RandomResizedCrop(S, scale, ratio)`` recipe (a box of
  random area fraction and log-uniform aspect ratio, 10 tries, else the whole image), resampled to
  ``S x S`` bilinearly with one ``grid_sample`` for the batch; then a random horizontal flip;
- evaluation: the centre ``S x S`` crop of the base image (``resize shorter side + centre crop``),
  exact pixels when ``B >= S``, a bilinear resize of the whole image otherwise.

Every random choice is drawn, in a fixed order, from an explicit CPU generator by :meth:`sample` and
applied by :meth:`apply` (the :class:`~friendly_sam.data.augment.Augmentation` protocol), like
:class:`~friendly_sam.data.BatchAugment`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .batch_augment import AugmentParams, BatchAugment

__all__ = ["CropParams", "ResizedCropAugment"]

_TRIES = 10


@dataclass(frozen=True)
class CropParams:
    """Per-image crop boxes in base-image pixels (float64 ``(N,)``) and flips (bool ``(N,)``).

    All ``None``: the deterministic evaluation crop.
    """

    top: torch.Tensor | None = None
    left: torch.Tensor | None = None
    height: torch.Tensor | None = None
    width: torch.Tensor | None = None
    flip: torch.Tensor | None = None


class ResizedCropAugment:
    """Random-resized-crop + flip (training) or centre crop (evaluation), then normalisation.

    Args:
        image_size: side ``S`` of the output images.
        random_crop: random-resized-crop (training); off: the centre crop (evaluation).
        scale: range of the crop's area as a fraction of the base image (torchvision: (0.08, 1)).
        ratio: range of the crop's aspect ratio, sampled log-uniformly (torchvision: (3/4, 4/3)).
        flip: random horizontal flips (p = 0.5).
        mean: per-channel mean for normalising the [0, 1]-scaled images (``None``: none).
        std: per-channel standard deviation for that normalisation (``None``: none).
    """

    def __init__(
        self,
        image_size: int,
        *,
        random_crop: bool = False,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale!r}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio!r}")
        self.image_size = image_size
        self.random_crop = bool(random_crop)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip = bool(flip)
        # Normalisation (and its checks) is BatchAugment's; reused, not repeated.
        self._normalise = BatchAugment(mean=mean, std=std)
        self.mean, self.std = self._normalise.mean, self._normalise.std

    @property
    def is_random(self) -> bool:
        """Whether the transform draws random numbers at all."""
        return self.random_crop or self.flip

    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> CropParams:
        """Draw the boxes and flips of ``n`` images of ``height x width`` (fixed draw order)."""
        g = generator
        top = left = ch = cw = flip = None
        if self.random_crop:
            area = float(height * width)
            frac = torch.rand(n, _TRIES, generator=g, dtype=torch.float64)
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * frac)
            lr0, lr1 = math.log(self.ratio[0]), math.log(self.ratio[1])
            aspect = torch.exp(lr0 + (lr1 - lr0) * torch.rand(n, _TRIES, generator=g, dtype=torch.float64))
            w_try, h_try = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))
            ok = (w_try > 0) & (w_try <= width) & (h_try > 0) & (h_try <= height)
            first = ok.to(torch.int8).argmax(1, keepdim=True)  # the first success, as the loop would take
            fw, fh = self._fallback(height, width)
            cw = torch.where(ok.any(1), w_try.gather(1, first)[:, 0], torch.tensor(fw, dtype=torch.float64))
            ch = torch.where(ok.any(1), h_try.gather(1, first)[:, 0], torch.tensor(fh, dtype=torch.float64))
            top = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (height - ch + 1))
            left = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (width - cw + 1))
        if self.flip:
            flip = torch.rand(n, generator=g) < 0.5
        return CropParams(top=top, left=left, height=ch, width=cw, flip=flip)

    def _fallback(self, height: int, width: int) -> tuple[float, float]:
        # torchvision: the whole image, narrowed to the nearest allowed aspect ratio.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            return float(width), float(round(width / self.ratio[0]))
        if in_ratio > self.ratio[1]:
            return float(round(height * self.ratio[1])), float(height)
        return float(width), float(height)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch ``x`` (uint8 or [0, 1] float ``(N, C, B, B)``) -> float32 ``(N, C, S, S)``."""
        if x.dim() != 4:
            raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
        return self.apply(x, self.sample(x.shape[0], x.shape[2], x.shape[3], generator))

    def apply(self, x: torch.Tensor, params: CropParams) -> torch.Tensor:
        """Apply given random choices (from :meth:`sample`) to the batch ``x``."""
        if x.dim() != 4:
            raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        s = self.image_size
        if n == 0:
            out = torch.zeros((0, c, s, s), device=x.device)
        elif params.top is None and h >= s and w >= s:
            t, lft = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
            out = x[:, :, t : t + s, lft : lft + s]  # exact centre crop: no resampling
            if params.flip is not None:
                out = torch.where(params.flip.to(x.device).view(n, 1, 1, 1), out.flip(3), out)
        else:
            out = self._resample(x, params)  # float in [0, 1]
        return self._normalise.apply(out, AugmentParams())

    def _resample(self, x: torch.Tensor, params: CropParams) -> torch.Tensor:
        # Output pixel u of a box (left, width) samples the source at left + (u + 0.5) * width / S - 0.5,
        # i.e. normalised coordinate (2 * left + (2u + 1) * width / S) / W - 1 (align_corners=False).
        # The grid is computed in float64 on the CPU, so it is the same wherever the batch lives.
        n, _, h, w = x.shape
        s = self.image_size
        if params.top is None:  # no random box (a base image smaller than S): the whole image
            top, left = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
            ch, cw = (
                torch.full((n,), float(h), dtype=torch.float64),
                torch.full((n,), float(w), dtype=torch.float64),
            )
        else:
            assert params.left is not None and params.height is not None and params.width is not None
            top, left, ch, cw = params.top, params.left, params.height, params.width
        u = torch.arange(s, dtype=torch.float64)
        us = u.expand(n, s)
        if params.flip is not None:
            us = torch.where(params.flip.view(n, 1), (s - 1) - u, u)
        gx = (2 * left.view(n, 1) + (2 * us + 1) * cw.view(n, 1) / s) / w - 1
        gy = (2 * top.view(n, 1) + (2 * u + 1) * ch.view(n, 1) / s) / h - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        src = x.to(torch.float32)
        if x.dtype == torch.uint8:
            src = src.div_(255.0)
        grid = grid.to(device=x.device, dtype=torch.float32)
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __repr__(self) -> str:
        parts = [f"image_size={self.image_size}"]
        if self.random_crop:
            parts.append(
                f"random_crop=True, scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)}"
            )
        parts.append(f"flip={self.flip}")
        if self.mean is not None and self.std is not None:
            parts.append(f"mean={tuple(round(v, 4) for v in self.mean.tolist())}")
            parts.append(f"std={tuple(round(v, 4) for v in self.std.tolist())}")
        return f"ResizedCropAugment({', '.join(parts)})"
