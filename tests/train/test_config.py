"""TrainConfig: files, overrides, validation; the shipped configs; the learning-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from friendly_sam.train import TrainConfig
from friendly_sam.train.setup import lr_factor

CONFIGS = sorted(
    p for p in (Path(__file__).parents[2] / "configs").rglob("*") if p.suffix in (".toml", ".yaml", ".yml")
)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    cfg = TrainConfig.from_file(path).validate()  # strict: unknown keys and wrong types are refused
    if path.parent.name == "paper" and path.stem.startswith("cifar"):
        assert cfg.epochs == 200 and cfg.batch_size == 128
    if path.stem.startswith("imagenet_resnet50"):
        assert (cfg.dataset, cfg.model, cfg.image_size, cfg.resize_size) == (
            "imagefolder",
            "torchvision:resnet50",
            224,
            256,
        )
        assert cfg.label == path.stem.rsplit("_", 1)[1] and cfg.epochs == 90
    if path.stem.startswith("deit"):
        assert cfg.model.startswith("timm:deit_small") and cfg.pretrained and cfg.new_head


def test_official_recipe_file_matches_the_reference():
    cfg = TrainConfig.from_file(Path(__file__).parents[2] / "configs/paper/cifar100_resnet18_fsam.toml")
    assert (cfg.dataset, cfg.model, cfg.method, cfg.lr, cfg.weight_decay) == (
        "cifar100",
        "resnet18",
        "fsam",
        0.05,
        1e-3,
    )
    assert (cfg.rho, cfg.sigma, cfg.lmbda, cfg.schedule, cfg.cutout) == (0.2, 1.0, 0.6, "cosine", True)


def test_yaml_needs_pyyaml_or_works(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: sam\nrho: 0.3\n")
    try:
        import yaml  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ModuleNotFoundError, match="pip install pyyaml"):
            TrainConfig.from_file(path)
    else:
        assert TrainConfig.from_file(path).rho == 0.3


def test_unknown_keys_and_formats(tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    path = tmp_path / "c.ini"
    path.write_text("lr = 0.1")
    with pytest.raises(ValueError, match="unknown format"):
        TrainConfig.from_file(path)


@pytest.mark.parametrize(
    "change",
    [
        {"warmup_epochs": 5, "epochs": 5},
        {"milestones": [0.5, 1.5]},
        {"device": "tpu"},
        {"max_grad_norm": 0.0},
        {"val_size": -1},
        {"threads": 0},
        {"gamma": 0.0},
        {"momentum": 1.0},
    ],
)
def test_validation_names_the_option(change):
    with pytest.raises(ValueError, match="--"):
        TrainConfig(**change).validate()


def test_cosine_schedule_per_iteration_with_warmup():
    cfg = TrainConfig(epochs=4, warmup_epochs=1)
    f = lr_factor(cfg, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(40) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule():
    cfg = TrainConfig(epochs=10, schedule="step", milestones=[0.5, 0.8], gamma=0.1)
    f = lr_factor(cfg, steps_per_epoch=10)
    assert [f(0), f(49), f(50), f(79), f(80)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
