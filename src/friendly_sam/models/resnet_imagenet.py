"""ImageNet ResNets (He et al. 2016, arXiv 1512.03385): for large images, such as your own photos.

The CIFAR networks keep the full resolution through their first stage (a 3x3 stride-1 stem): at 224 px
that is 50 times the activations, time and memory of a 32 px input. These networks downsample by 4 at
once, as for ImageNet: a 7x7 stride-2 stem conv (64 channels), BatchNorm, ReLU and a 3x3 stride-2
max-pool; then four stages (64, 128, 256, 512 planes; stride 2 at the start of stages 2-4), global
average pooling and a linear classifier.

- ``resnet18_imagenet``: BasicBlocks [2, 2, 2, 2]; 11,689,512 parameters for 1000 classes.
- ``resnet50_imagenet``: Bottlenecks [3, 4, 6, 3] (expansion 4, the stride on the 3x3 conv: "v1.5");
  25,557,032 parameters for 1000 classes.

Module names, shapes and initialisation (Kaiming-normal, fan-out, for convs; BatchNorm weight 1 and bias
0) are torchvision's ``resnet18`` / ``resnet50``, so their state dicts load with ``--pretrained`` (with
``--new-head`` for other classes), while nothing here needs torchvision.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model
from .stages import residual_stages
from .weight_init import initialise_, kaiming_fan_out_

__all__ = ["ImageNetResNet", "resnet18_imagenet", "resnet50_imagenet"]


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_planes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ImageNetResNet(nn.Module):
    """ResNet with the ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool); ``bottleneck`` picks the
    block, ``blocks`` the number per stage."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        bottleneck: bool = False,
    ) -> None:
        super().__init__()
        block = _Bottleneck if bottleneck else _BasicBlock
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stage_planes = [[planes] * n for planes, n in zip((64, 128, 256, 512), blocks, strict=True)]
        stages, out_planes = residual_stages(block, 64, stage_planes, block.expansion)
        for i, units in enumerate(stages):
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_planes, num_classes)
        initialise_(self, kaiming_fan_out_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(
    "resnet18_imagenet",
    description="ImageNet ResNet-18 (7x7 stride-2 stem + max-pool): for large images (e.g. 224 px)",
    source="He et al. 2016; layout and initialisation of torchvision.models.resnet18",
    kind="large",
)
def resnet18_imagenet(num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    """ImageNet ResNet-18 (11.69M parameters for 1000 classes)."""
    return ImageNetResNet(num_classes, in_channels, (2, 2, 2, 2))


@register_model(
    "resnet50_imagenet",
    description="ImageNet ResNet-50 (bottlenecks, 7x7 stride-2 stem + max-pool): for large images",
    source="He et al. 2016; layout and initialisation of torchvision.models.resnet50 (v1.5)",
    kind="large",
)
def resnet50_imagenet(num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    """ImageNet ResNet-50 (25.56M parameters for 1000 classes)."""
    return ImageNetResNet(num_classes, in_channels, (3, 4, 6, 3), bottleneck=True)
