"""Splits and TensorBatchLoader: coverage, determinism and exact resume."""

from __future__ import annotations

import pytest
import torch

from friendly_sam.data import BatchAugment, TensorBatchLoader, subset, train_val_split
from friendly_sam.data.loader import derive_seed


def _data(n=103, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n)


def _aug():
    return BatchAugment(
        crop_padding=2, flip=True, cutout_size=4, cutout_p=0.5, mean=(0.5,) * 3, std=(0.25,) * 3
    )


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b)
    )


@pytest.mark.parametrize(("drop_last", "expected"), [(False, 11), (True, 10)])
def test_len_and_coverage(drop_last, expected):
    x, y = _data()
    loader = TensorBatchLoader(x, y, 10, shuffle=True, drop_last=drop_last, seed=1)
    assert len(loader) == expected
    batches = list(loader)
    assert len(batches) == expected
    seen = torch.cat([b[1] for b in batches])
    assert seen.unique().numel() == seen.numel() == (100 if drop_last else 103)
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    xd, yd = TensorBatchLoader(x, y, 10, shuffle=True, drop_last=drop_last, seed=1, device="cpu").batch(0)
    assert torch.equal(xd, xb) and torch.equal(yd, yb)
    assert torch.equal(xb, x[yb].float() / 255)  # no augment: scaled to [0, 1]


def test_no_shuffle_keeps_order():
    x, y = _data(25)
    assert torch.cat([b[1] for b in TensorBatchLoader(x, y, 7)]).tolist() == list(range(25))


@pytest.mark.parametrize("k", [0, 1, 5, 10, 11])
def test_resume_equals_tail_of_full_epoch(k):
    x, y = _data()
    full_loader = TensorBatchLoader(x, y, 10, shuffle=True, augment=_aug(), seed=3)
    full_loader.set_epoch(4)
    full = list(full_loader)
    # A fresh loader (as after a restart) resumed at batch k of epoch 4.
    resumed = TensorBatchLoader(x, y, 10, shuffle=True, augment=_aug(), seed=3)
    resumed.set_epoch(4, start_batch=k)
    assert _same(list(resumed), full[k:])
    assert _same(list(resumed.iter_from(k, epoch=4)), full[k:])
    if k < len(full):
        assert _same([resumed.batch(k, epoch=4)], [full[k]])


def test_epochs_differ_and_auto_advance():
    x, y = _data()
    loader = TensorBatchLoader(x, y, 10, shuffle=True, augment=_aug(), seed=0)
    e0 = list(loader)  # epoch 0, then the loader moves to epoch 1
    assert loader.epoch == 1
    e1 = list(loader)
    assert not torch.equal(torch.cat([b[1] for b in e0]), torch.cat([b[1] for b in e1]))
    loader.set_epoch(0)
    assert _same(list(loader), e0)
    other_seed = TensorBatchLoader(x, y, 10, shuffle=True, augment=_aug(), seed=1)
    assert not _same(list(other_seed), e0)


def test_augment_is_per_batch_function_of_seed_epoch_index():
    x, y = _data(40)
    # Same images in every batch: only the augmentation stream can differ between batches.
    same = TensorBatchLoader(x[:1].expand(40, -1, -1, -1), y, 10, augment=_aug(), seed=0)
    batches = list(same)
    assert not torch.equal(batches[0][0], batches[1][0])


def test_batch_size_validation():
    x, y = _data(5)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="batch_size"):
            TensorBatchLoader(x, y, bad)
    with pytest.raises(ValueError, match="same first dimension"):
        TensorBatchLoader(x, y[:4], 2)
    loader = TensorBatchLoader(x, y, 2)
    with pytest.raises(ValueError):
        loader.set_epoch(0, start_batch=4)
    with pytest.raises(IndexError):
        loader.batch(3)


def test_train_val_split():
    x, y = _data(50)
    s = train_val_split(x, y, 10, seed=0)
    assert s.val_labels.numel() == 10 and s.train_labels.numel() == 40
    assert sorted(torch.cat([s.train_labels, s.val_labels]).tolist()) == list(range(50))
    assert torch.equal(s.train_images, x[s.train_labels]) and torch.equal(s.val_images, x[s.val_labels])
    assert bool((s.train_labels.diff() > 0).all())  # original order kept
    assert torch.equal(train_val_split(x, y, 10, seed=0).val_labels, s.val_labels)
    assert not torch.equal(train_val_split(x, y, 10, seed=1).val_labels, s.val_labels)
    assert train_val_split(x, y, 0.25, seed=0).val_labels.numel() == 13  # 12.5 rounds half up
    for bad in (51, -1, 1.0, 0.0):
        with pytest.raises(ValueError):
            train_val_split(x, y, bad)


def test_subset_nested_and_reproducible():
    x, y = _data(60)
    small = subset(x, y, 10, seed=2)[1]
    big = subset(x, y, 30, seed=2)[1]
    assert small.numel() == 10 and set(small.tolist()) <= set(big.tolist())
    assert torch.equal(subset(x, y, 10, seed=2)[1], small)
    with pytest.raises(ValueError):
        subset(x, y, 61)


def test_derive_seed_mixes():
    assert derive_seed(0, 1) != derive_seed(1, 0) and derive_seed(0, 1) == derive_seed(0, 1)
    assert 0 <= derive_seed(-5, 2**70) < 2**63
