"""Synthetic label noise for robustness experiments (symmetric and class-dependent "asymmetric").

Conventions (they matter when comparing with published tables):

* **symmetric**: exactly ``round(rate * N)`` samples, chosen uniformly at random without
  replacement, get a label drawn uniformly from the *other* ``num_classes - 1`` classes. So
  ``rate`` is the true fraction of wrong labels. (Some papers instead redraw the label from all
  classes, which leaves ``rate / num_classes`` of the chosen labels unchanged: their "40 %"
  is 36 % actual noise with 10 classes.)
* **asymmetric**: only samples of classes that the map sends elsewhere are touched; in each such
  class exactly ``round(rate * count)`` samples, chosen at random, take the mapped label. The
  choice is made on the clean labels, so swaps (cat <-> dog) never flip a sample twice.

``round`` rounds halves up (``floor(x + 0.5)``), not to even. Everything is drawn from a
``torch.Generator`` seeded with ``seed``: the same call gives the same noise on any machine.

Asymmetric maps (``ASYMMETRIC_MAPS``):

* ``cifar10`` (Patrini et al. 2017, used throughout the literature): truck -> automobile,
  bird -> airplane, deer -> horse, cat <-> dog.
* ``cifar100``: each class -> the next class of its superclass, circularly, with the 5 classes
  of a superclass taken in fine-label order. This uses the *true* 20 superclasses. Note that
  Patrini et al.'s code (copied by many later repositories) instead groups the consecutive fine
  labels ``5k..5k+4``, which are not superclasses because the fine labels are alphabetical.
* ``mnist`` (Patrini et al. 2017): 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1.
* ``fashion-mnist`` (our choice of visually similar classes; there is no single standard):
  T-shirt/top <-> Shirt, Pullover <-> Coat, Sandal -> Sneaker, Ankle boot -> Sneaker.
  Trouser, Dress, Sneaker and Bag keep their labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .classes import CIFAR100_CLASSES, CIFAR100_SUPERCLASSES

__all__ = ["ASYMMETRIC_MAPS", "NOISE_KINDS", "apply_label_noise", "asymmetric_map"]

NOISE_KINDS: tuple[str, ...] = ("symmetric", "asymmetric")


def _cifar100_map() -> dict[int, int]:
    index = {name: i for i, name in enumerate(CIFAR100_CLASSES)}
    mapping: dict[int, int] = {}
    for _, members in CIFAR100_SUPERCLASSES:
        ids = sorted(index[m] for m in members)
        for j, c in enumerate(ids):
            mapping[c] = ids[(j + 1) % len(ids)]
    return mapping


ASYMMETRIC_MAPS: dict[str, dict[int, int]] = {
    # airplane 0, automobile 1, bird 2, cat 3, deer 4, dog 5, frog 6, horse 7, ship 8, truck 9
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
    "cifar100": _cifar100_map(),
    "mnist": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
    # T-shirt/top 0, Trouser 1, Pullover 2, Dress 3, Coat 4, Sandal 5, Shirt 6, Sneaker 7, Bag 8, Ankle boot 9
    "fashion-mnist": {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 9: 7},
}


def asymmetric_map(dataset: str) -> dict[int, int]:
    """The asymmetric-noise map ``{clean class: noisy class}`` of a data set (a copy)."""
    key = dataset.strip().lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashionmnist": "fashion-mnist"}.get(key, key)
    if key not in ASYMMETRIC_MAPS:
        raise ValueError(
            f"no asymmetric noise map for {dataset!r}; known: {', '.join(ASYMMETRIC_MAPS)} "
            "(or pass an explicit {source: target} mapping as `dataset`)"
        )
    return dict(ASYMMETRIC_MAPS[key])


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def apply_label_noise(
    labels: torch.Tensor,
    num_classes: int,
    rate: float,
    kind: str = "symmetric",
    seed: int = 0,
    dataset: str | Mapping[int, int] | Any | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a copy of ``labels``; see the module docstring for the exact conventions.

    Args:
        labels: 1-d integer tensor of clean labels in ``[0, num_classes)`` (not modified).
        num_classes: number of classes.
        rate: fraction in [0, 1] (of all samples for symmetric noise, of each mapped class for
            asymmetric noise).
        kind: ``"symmetric"`` or ``"asymmetric"``.
        seed: seed of the ``torch.Generator`` driving every random choice.
        dataset: for asymmetric noise: a data-set name (``"cifar10"``, ``"cifar100"``, ``"mnist"``,
            ``"fashion-mnist"``), an object with a ``name`` attribute (a ``Dataset``), or an explicit
            ``{source class: target class}`` mapping. Ignored for symmetric noise.

    Returns:
        ``(noisy_labels, noisy_indices)``: int64 labels on the device of ``labels``, and the sorted
        int64 indices whose label now differs from the clean one.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")
    if not isinstance(rate, (int, float)) or not (0.0 <= float(rate) <= 1.0) or math.isnan(float(rate)):
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-d integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    clean = labels.detach().to("cpu", torch.int64)
    if clean.numel() and (int(clean.min()) < 0 or int(clean.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{int(clean.min())}, {int(clean.max())}]"
        )

    gen = torch.Generator().manual_seed(int(seed))
    noisy = clean.clone()
    if kind == "symmetric":
        n = clean.numel()
        k = _round_half_up(float(rate) * n)
        if k and num_classes < 2:
            raise ValueError("symmetric noise needs at least 2 classes")
        chosen = torch.randperm(n, generator=gen)[:k]
        # An offset in 1..K-1 added modulo K gives a uniform draw among the other K-1 classes.
        offset = torch.randint(1, max(num_classes, 2), (k,), generator=gen)
        noisy[chosen] = (clean[chosen] + offset) % num_classes
    else:
        mapping = _resolve_map(dataset, num_classes)
        for src in sorted(mapping):  # fixed order: reproducible regardless of dict order
            idx = (clean == src).nonzero().flatten()
            k = _round_half_up(float(rate) * idx.numel())
            chosen = idx[torch.randperm(idx.numel(), generator=gen)[:k]]
            noisy[chosen] = mapping[src]
    noisy_indices = (noisy != clean).nonzero().flatten()
    return noisy.to(labels.device), noisy_indices.to(labels.device)


def _resolve_map(dataset: str | Mapping[int, int] | Any | None, num_classes: int) -> dict[int, int]:
    if dataset is None:
        raise ValueError(
            "asymmetric noise needs `dataset`: a name "
            f"({', '.join(ASYMMETRIC_MAPS)}), a Dataset, or a {{source: target}} mapping"
        )
    if isinstance(dataset, Mapping):
        mapping = {int(k): int(v) for k, v in dataset.items()}
    elif isinstance(dataset, str):
        mapping = asymmetric_map(dataset)
    elif isinstance(getattr(dataset, "name", None), str):
        mapping = asymmetric_map(dataset.name)
    else:
        raise ValueError(f"`dataset` must be a name, a Dataset or a mapping, got {type(dataset).__name__}")
    for s, t in mapping.items():
        if not (0 <= s < num_classes and 0 <= t < num_classes):
            raise ValueError(f"noise map {s} -> {t} is outside [0, {num_classes}): wrong num_classes or map?")
        if s == t:
            raise ValueError(f"noise map sends class {s} to itself")
    return mapping
