"""The ImageNet ResNets: a stem that downsamples by 4 before the first stage, and torchvision's module
names (so torchvision state dicts load with --pretrained), without torchvision."""

from __future__ import annotations

import pytest
import torch

from friendly_sam.models import build_model


@pytest.mark.parametrize("name", ["resnet18_imagenet", "resnet50_imagenet"])
def test_stem_downsamples_by_four_and_the_head_pools(name):
    model = build_model(name, num_classes=7, in_channels=3).eval()
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(layer1=tuple(o.shape)))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 7)
    assert seen["layer1"][-2:] == (56, 56)  # a CIFAR stem would keep 224 x 224 here
    grey = build_model(name, num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        assert grey(torch.randn(2, 1, 28, 28)).shape == (2, 3)  # small inputs still run


def test_module_names_are_torchvisions():
    r18 = build_model("resnet18_imagenet", 1000).state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.running_mean", "layer4.1.bn2.bias", "fc.weight", "fc.bias"):
        assert key in r18, key
    assert len(r18) == 122 and len([k for k in r18 if k.endswith(".weight")]) == 41  # as torchvision resnet18
    r50 = build_model("resnet50_imagenet", 1000).state_dict()
    for key in ("layer1.0.conv3.weight", "layer1.0.downsample.1.weight", "layer4.2.bn3.running_var"):
        assert key in r50, key
    assert tuple(r50["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)  # the stride on the 3x3 (v1.5)
