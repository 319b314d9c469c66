"""Label noise: exact rates, the asymmetric maps, reproducibility and validation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from friendly_sam.data import apply_label_noise
from friendly_sam.data.classes import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    FASHION_MNIST_CLASSES,
    cifar100_coarse_of_fine,
)
from friendly_sam.data.noise import ASYMMETRIC_MAPS, asymmetric_map


def _labels(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def _round(x: float) -> int:
    return math.floor(x + 0.5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), k=st.integers(2, 12), rate=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_symmetric_exact_fraction_and_other_class(n, k, rate, seed):
    clean = _labels(n, k, seed)
    noisy, idx = apply_label_noise(clean, k, rate, "symmetric", seed)
    changed = (noisy != clean).nonzero().flatten()
    assert idx.tolist() == changed.tolist()  # sorted, exactly the changed samples
    assert len(idx) == _round(rate * n)  # every chosen label really changes
    assert noisy.dtype == torch.int64 and bool(((noisy >= 0) & (noisy < k)).all())


def test_symmetric_target_uniform_over_other_classes():
    k, n = 5, 50000
    clean = torch.zeros(n, dtype=torch.int64)
    noisy, idx = apply_label_noise(clean, k, 0.8, "symmetric", seed=1)
    counts = torch.bincount(noisy[idx], minlength=k).double()
    assert counts[0] == 0
    expected = len(idx) / (k - 1)
    assert ((counts[1:] - expected).abs() < 5 * math.sqrt(expected)).all()


def test_symmetric_reproducible_and_seed_dependent():
    clean = _labels(1000, 10)
    a = apply_label_noise(clean, 10, 0.4, "symmetric", seed=7)
    b = apply_label_noise(clean, 10, 0.4, "symmetric", seed=7)
    c = apply_label_noise(clean, 10, 0.4, "symmetric", seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_edges_and_input_untouched():
    clean = _labels(101, 10)
    before = clean.clone()
    noisy, idx = apply_label_noise(clean, 10, 0.0, "symmetric", 0)
    assert torch.equal(noisy, clean) and idx.numel() == 0
    noisy, idx = apply_label_noise(clean, 10, 1.0, "symmetric", 0)
    assert idx.numel() == 101 and bool((noisy != clean).all())
    assert torch.equal(clean, before)
    noisy, _ = apply_label_noise(clean.to(torch.uint8), 10, 0.5, "symmetric", 0)
    assert noisy.dtype == torch.int64


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.37, 0.4, 1.0])
def test_asymmetric_cifar10(rate):
    clean = _labels(2003, 10, seed=3)
    noisy, idx = apply_label_noise(clean, 10, rate, "asymmetric", seed=0, dataset="cifar10")
    name = dict(enumerate(CIFAR10_CLASSES))
    expected_map = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    assert {name[s]: name[t] for s, t in ASYMMETRIC_MAPS["cifar10"].items()} == expected_map
    mapping = asymmetric_map("cifar10")
    for c in range(10):
        members = clean == c
        flipped = members & (noisy != clean)
        if c in mapping:
            assert int(flipped.sum()) == _round(rate * int(members.sum()))
            assert bool((noisy[flipped] == mapping[c]).all())
        else:
            assert int(flipped.sum()) == 0
    assert idx.tolist() == (noisy != clean).nonzero().flatten().tolist()


def test_cifar100_map_cycles_within_superclasses():
    mapping = asymmetric_map("cifar100")
    coarse = cifar100_coarse_of_fine()
    assert sorted(mapping) == list(range(100)) and sorted(mapping.values()) == list(
        range(100)
    )  # a permutation
    assert sorted(coarse) == sorted(list(range(20)) * 5)
    for s, t in mapping.items():
        assert s != t and coarse[s] == coarse[t]
    for s in mapping:  # each superclass is one 5-cycle, in increasing fine-label order
        cycle = [s]
        while mapping[cycle[-1]] != s:
            cycle.append(mapping[cycle[-1]])
        assert len(cycle) == 5
    by_name = {CIFAR100_CLASSES[s]: CIFAR100_CLASSES[t] for s, t in mapping.items()}
    assert (
        by_name["beaver"] == "dolphin"
        and by_name["whale"] == "beaver"
        and by_name["maple_tree"] == "oak_tree"
    )


def test_mnist_and_fashion_maps():
    assert asymmetric_map("mnist") == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
    names = dict(enumerate(FASHION_MNIST_CLASSES))
    fashion = {names[s]: names[t] for s, t in asymmetric_map("fashion_mnist").items()}
    assert fashion == {
        "T-shirt/top": "Shirt",
        "Shirt": "T-shirt/top",
        "Pullover": "Coat",
        "Coat": "Pullover",
        "Sandal": "Sneaker",
        "Ankle boot": "Sneaker",
    }


def test_asymmetric_swap_flips_each_sample_once():
    clean = torch.tensor([5] * 10 + [6] * 10)
    noisy, idx = apply_label_noise(clean, 10, 0.5, "asymmetric", seed=0, dataset="mnist")
    assert int((noisy[:10] == 6).sum()) == 5 and int((noisy[10:] == 5).sum()) == 5 and len(idx) == 10


def test_dataset_argument_forms():
    clean = _labels(500, 10)
    a = apply_label_noise(clean, 10, 0.3, "asymmetric", 4, dataset="cifar10")
    b = apply_label_noise(clean, 10, 0.3, "asymmetric", 4, dataset=SimpleNamespace(name="cifar10"))
    c = apply_label_noise(clean, 10, 0.3, "asymmetric", 4, dataset=ASYMMETRIC_MAPS["cifar10"])
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
    d = apply_label_noise(clean, 10, 1.0, "asymmetric", 4, dataset={0: 1})
    assert torch.equal(d[1], (clean == 0).nonzero().flatten())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 1.5}, "rate"),
        ({"rate": -0.1}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"kind": "pairflip"}, "kind"),
        ({"kind": "asymmetric"}, "needs `dataset`"),
        ({"kind": "asymmetric", "dataset": "svhn"}, "no asymmetric noise map"),
        ({"kind": "asymmetric", "dataset": {0: 0}}, "itself"),
        ({"kind": "asymmetric", "dataset": {0: 10}}, "outside"),
        ({"num_classes": 5}, r"\[0, 5\)"),
    ],
)
def test_validation(kwargs, match):
    args = {"labels": _labels(50, 10), "num_classes": 10, "rate": 0.2, "kind": "symmetric", "seed": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        apply_label_noise(**args)
