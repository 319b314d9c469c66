"""BatchAugment: shapes, determinism, and equality with a simple per-image reference."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from friendly_sam.data import BatchAugment
from friendly_sam.data.batch_augment import AugmentParams, to_float


def _images(n=16, c=3, h=32, w=32, seed=0) -> torch.Tensor:
    return torch.randint(
        1, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _reference(aug: BatchAugment, x: torch.Tensor, prm: AugmentParams) -> torch.Tensor:
    """Per-image loop written the obvious way (pad, slice, flip, normalise, cut)."""
    out = []
    p = aug.crop_padding
    _, c, h, w = x.shape
    for i in range(x.shape[0]):
        img = x[i]
        if prm.crop_top is not None:
            padded = F.pad(img, (p, p, p, p))
            t, left = int(prm.crop_top[i]), int(prm.crop_left[i])
            img = padded[:, t : t + h, left : left + w]
        if prm.flip is not None and bool(prm.flip[i]):
            img = img.flip(-1)
        img = img.float() / 255
        if aug.mean is not None:
            img = (img - aug.mean.view(-1, 1, 1)) / aug.std.view(-1, 1, 1)
        if prm.cut is not None and bool(prm.cut[i]):
            half = aug.cutout_size // 2
            y0, x0 = int(prm.cut_y[i]) - half, int(prm.cut_x[i]) - half
            img = img.clone()
            img[:, max(0, y0) : max(0, y0 + aug.cutout_size), max(0, x0) : max(0, x0 + aug.cutout_size)] = (
                aug.cutout_value
            )
        out.append(img)
    return torch.stack(out)


@pytest.mark.parametrize(
    "kwargs",
    [
        {
            "crop_padding": 4,
            "flip": True,
            "cutout_size": 16,
            "cutout_p": 0.5,
            "mean": (0.5, 0.4, 0.3),
            "std": (0.2, 0.25, 0.3),
        },
        {"crop_padding": 4},
        {"flip": True},
        {"cutout_size": 16, "cutout_p": 1.0, "cutout_value": -3.0},
        {"crop_padding": 2, "cutout_size": 5, "cutout_p": 0.7},
    ],
)
def test_matches_per_image_reference(kwargs):
    aug = BatchAugment(**kwargs)
    x = _images(n=64)
    prm = aug.sample(64, 32, 32, torch.Generator().manual_seed(3))
    got = aug.apply(x, prm)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert torch.allclose(got, _reference(aug, x, prm), atol=1e-6, rtol=0)


def test_reference_on_grey_non_square():
    aug = BatchAugment(crop_padding=3, flip=True, cutout_size=6, cutout_p=1.0, mean=(0.3,), std=(0.4,))
    x = _images(n=40, c=1, h=28, w=20)
    prm = aug.sample(40, 28, 20, torch.Generator().manual_seed(0))
    assert torch.allclose(aug.apply(x, prm), _reference(aug, x, prm), atol=1e-6, rtol=0)


def test_crop_offsets_and_zero_padding():
    aug = BatchAugment(crop_padding=4)
    x = _images(n=2, c=1, h=8, w=8)
    prm = AugmentParams(crop_top=torch.tensor([0, 4]), crop_left=torch.tensor([8, 4]))
    out = aug.apply(x, prm)
    # Image 0: window starts 4 rows above the image and 4 columns right of it.
    assert (out[0, :, :4] == 0).all() and (out[0, :, :, 4:] == 0).all()
    assert torch.equal(out[0, 0, 4:, :4], x[0, 0, :4, 4:].float() / 255)
    assert torch.equal(out[1], x[1].float() / 255)  # offset p = no shift


def test_flip_only():
    x = _images(n=3)
    out = BatchAugment(flip=True).apply(x, AugmentParams(flip=torch.tensor([True, False, True])))
    assert torch.equal(out[0], x[0].flip(-1).float() / 255) and torch.equal(out[1], x[1].float() / 255)


def test_cutout_area_and_border_clipping():
    aug = BatchAugment(cutout_size=16, cutout_p=1.0, cutout_value=0.0)
    x = _images(n=3)  # values >= 1, so the only zeros are the cut pixels
    prm = AugmentParams(
        cut=torch.tensor([True, True, False]), cut_y=torch.tensor([16, 0, 5]), cut_x=torch.tensor([16, 31, 5])
    )
    out = aug.apply(x, prm)
    zeros = (out == 0).all(dim=1).sum(dim=(1, 2))
    assert zeros.tolist() == [16 * 16, 8 * 9, 0]  # centred; corner box clipped to rows 0..7, cols 23..31
    assert (out[0, :, 8:24, 8:24] == 0).all()


def test_cutout_probability():
    aug = BatchAugment(cutout_size=16, cutout_p=0.5)
    prm = aug.sample(4000, 32, 32, torch.Generator().manual_seed(0))
    assert abs(prm.cut.float().mean().item() - 0.5) < 0.04
    assert (
        int(prm.cut_y.min()) == 0 and int(prm.cut_y.max()) == 31
    )  # centre anywhere: box may leave the image


def test_deterministic_from_generator():
    aug = BatchAugment(crop_padding=4, flip=True, cutout_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = _images()
    a = aug(x, torch.Generator().manual_seed(11))
    b = aug(x, torch.Generator().manual_seed(11))
    c = aug(x, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_offsets_cover_range():
    prm = BatchAugment(crop_padding=4).sample(2000, 32, 32, torch.Generator().manual_seed(0))
    assert sorted(set(prm.crop_top.tolist())) == list(range(9)) and sorted(
        set(prm.crop_left.tolist())
    ) == list(range(9))


def test_eval_transform_and_float_input_untouched():
    x = _images(n=4)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(to_float(x, mean, std), ref, atol=1e-6)
    assert torch.allclose(BatchAugment(mean=mean, std=std)(x), ref, atol=1e-6)
    xf = x.float() / 255
    before = xf.clone()
    BatchAugment(mean=mean, std=std)(xf)
    BatchAugment(cutout_size=8, cutout_p=1.0)(xf, torch.Generator().manual_seed(0))
    assert torch.equal(xf, before)


def test_for_dataset_recipes():
    cifar = SimpleNamespace(name="cifar10", mean=(0.5,) * 3, std=(0.25,) * 3)
    a = BatchAugment.for_dataset(cifar)
    assert (a.crop_padding, a.flip, a.cutout_size, a.cutout_p) == (4, True, 16, 0.5)
    digits = BatchAugment.for_dataset(SimpleNamespace(name="mnist", mean=(0.1,), std=(0.3,)))
    assert (digits.flip, digits.cutout_size) == (False, 0)
    ev = BatchAugment.for_dataset(cifar, train=False)
    assert not ev.is_random and "BatchAugment" in repr(ev)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crop_padding": -1},
        {"cutout_size": 2.5},
        {"cutout_p": 1.5},
        {"mean": (0.5,), "std": (0.0,)},
        {"mean": (0.5,)},
    ],
)
def test_validation(kwargs):
    with pytest.raises(ValueError):
        BatchAugment(**kwargs)


def test_wrong_rank_and_channel_count():
    with pytest.raises(ValueError, match="N, C, H, W"):
        BatchAugment()(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        BatchAugment(mean=(0.1, 0.2), std=(0.3, 0.3))(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
