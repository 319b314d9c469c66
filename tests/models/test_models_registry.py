"""Registry API, parameter counts against the literature, and describe_models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import friendly_sam.models as models
from friendly_sam.models import (
    MODEL_NAMES,
    PyramidNet,
    WideResNet,
    available_models,
    build_model,
    count_parameters,
    describe_models,
    register_model,
)
from friendly_sam.models.registry import _REGISTRY, _SkipRandomInitOnMeta

PAPER_MODELS = {"resnet18", "vgg16_bn", "wrn28_10", "pyramidnet110"}
CPU_MODELS = {"resnet8", "resnet20", "resnet32", "cnn_small"}
IMAGENET_MODELS = {"resnet18_imagenet", "resnet50_imagenet"}  # large images: downsampling stem

# Exact counts (10 classes, 3 input channels) as built here; regression values.
EXACT_10 = {
    "resnet18": 11_173_962,
    "vgg16_bn": 15_253_578,
    "wrn28_10": 36_479_194,
    "pyramidnet110": 18_323_787,
    "resnet8": 75_290,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "cnn_small": 94_762,
    "resnet18_imagenet": 11_181_642,
    "resnet50_imagenet": 23_528_522,
}


def _meta_count(factory, *args, **kwargs) -> int:
    with torch.device("meta"), _SkipRandomInitOnMeta():
        return count_parameters(factory(*args, **kwargs))


def test_model_names() -> None:
    assert isinstance(MODEL_NAMES, tuple)
    assert set(MODEL_NAMES) == PAPER_MODELS | CPU_MODELS | IMAGENET_MODELS
    assert MODEL_NAMES[: len(PAPER_MODELS)] == ("resnet18", "vgg16_bn", "wrn28_10", "pyramidnet110")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        build_model("resnet1000", num_classes=10)
    message = str(info.value)
    assert "resnet1000" in message
    for name in MODEL_NAMES:
        assert name in message


def test_names_are_case_insensitive_and_sizes_validated() -> None:
    assert count_parameters(build_model(" ResNet8 ", 10)) == EXACT_10["resnet8"]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            build_model("resnet8", num_classes=bad)
        with pytest.raises(ValueError):
            build_model("resnet8", num_classes=10, in_channels=bad)


def test_literature_parameter_counts() -> None:
    # ResNet-18 (CIFAR form, e.g. kuangliu/pytorch-cifar, F-SAM code): 11.17M.
    resnet18 = count_parameters(build_model("resnet18", 10, 3))
    assert resnet18 == pytest.approx(11.17e6, rel=0.01)
    # WRN-28-10: 36.5M (Zagoruyko & Komodakis 2016, Table 1); WRN-34-10: 46.2M.
    wrn = count_parameters(build_model("wrn28_10", 10, 3))
    assert wrn == pytest.approx(36.5e6, rel=0.01)
    assert _meta_count(WideResNet, 34, 10) == pytest.approx(46.2e6, rel=0.01)
    # CIFAR ResNet-20 / -32: 0.27M / 0.46M (He et al. 2016, Table 6).
    assert EXACT_10["resnet20"] == pytest.approx(0.27e6, rel=0.01)
    assert EXACT_10["resnet32"] == pytest.approx(0.46e6, rel=0.01)
    # PyramidNet paper, Table 4: basic 110/alpha 270: 28.3M; bottleneck 272/alpha 200: 26.0M.
    assert _meta_count(PyramidNet, 110, 270, bottleneck=False) == pytest.approx(28.3e6, rel=0.01)
    assert _meta_count(PyramidNet, 272, 200) == pytest.approx(26.0e6, rel=0.01)
    assert _meta_count(PyramidNet, 110, 270) == EXACT_10["pyramidnet110"]  # F-SAM code's variant
    # ImageNet ResNet-18 / -50, 1000 classes: torchvision's counts exactly (same layout).
    assert count_parameters(build_model("resnet18_imagenet", 1000, 3)) == 11_689_512
    assert count_parameters(build_model("resnet50_imagenet", 1000, 3)) == 25_557_032


def test_describe_models_matches_real_counts() -> None:
    rows = describe_models()
    assert [r["name"] for r in rows] == list(MODEL_NAMES)
    for row in rows:
        assert set(row) >= {"name", "params", "description", "paper", "kind", "source"}
        assert isinstance(row["description"], str) and row["description"] and "\n" not in row["description"]
        assert row["paper"] == (row["name"] in PAPER_MODELS)
        assert row["kind"] == ("paper" if row["paper"] else "large" if row["name"] in IMAGENET_MODELS else "cpu")
        assert row["params"] == EXACT_10[row["name"]]
    # Counts from the meta device equal those of real CPU models (cheap ones here; wrn28_10 and
    # resnet18 are built on CPU in test_literature_parameter_counts).
    for name in CPU_MODELS | {"vgg16_bn"}:
        assert count_parameters(build_model(name, 10, 3)) == EXACT_10[name]
    grey100 = {r["name"]: r["params"] for r in describe_models(num_classes=100, in_channels=1)}
    assert grey100["resnet20"] == count_parameters(build_model("resnet20", 100, 1))
    assert grey100["resnet18"] == EXACT_10["resnet18"] - 2 * 64 * 9 + 90 * 513


def test_model_kwargs_are_passed_through() -> None:
    model = build_model("wrn28_10", 10, dropout=0.3)
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.3}
    with pytest.raises(TypeError):
        build_model("resnet8", 10, no_such_option=1)


def test_register_model_decorator() -> None:
    name = "tmp_test_linear"
    try:

        @register_model(name, description="a linear probe", source="tests")
        def tmp(num_classes: int, in_channels: int = 3) -> nn.Module:
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))

        assert name in available_models()
        assert build_model(name, 4, in_channels=2)(torch.randn(2, 2, 5, 5)).shape == (2, 4)
        row = {r["name"]: r for r in describe_models()}[name]
        assert row["params"] == 3 * 10 + 10 and row["kind"] == "cpu" and not row["paper"]
        with pytest.raises(ValueError, match="already registered"):
            register_model(name.upper(), description="dup")(tmp)
    finally:
        _REGISTRY.pop(name, None)
        models.registry._param_count.cache_clear()
    assert name not in available_models()


def test_vgg_pooling_equals_original_on_32x32() -> None:
    # ceil-mode max-pools and a global max-pool at the end are the plain VGG on 32x32 inputs.
    torch.manual_seed(0)
    model = build_model("vgg16_bn", 10).eval()
    plain = nn.Sequential(
        *[
            nn.MaxPool2d(2, 2) if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) else m
            for m in model.features
        ]
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.features(x).flatten(1), plain(x).flatten(1))
