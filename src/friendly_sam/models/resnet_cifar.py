"""Classic CIFAR ResNets (ResNet-8/20/32): 3 stages of 16/32/64 channels, 6n+2 layers.

Architecture from He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition"
(CVPR 2016, arXiv 1512.03385), section 4.2: a 3x3 stem conv with 16 channels, three stages of ``n``
basic blocks (16, 32, 64 channels; the first block of stages 2 and 3 halves the resolution),
global average pooling and a linear classifier. Shortcuts are the paper's parameter-free option A
(strided identity, zero-padded channels), so ResNet-20 has 0.27M and ResNet-32 0.46M parameters as
in the paper's Table 6. Weight init follows the widely used PyTorch port (github akamaster/
pytorch_resnet_cifar10): Kaiming-normal for conv and linear weights.

ResNet-32 is the network of the SAM paper's label-noise experiments. Global average pooling makes
the networks work on 28x28 (MNIST-like) as well as 32x32 inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .stages import residual_stages

__all__ = ["CifarResNet", "resnet8", "resnet20", "resnet32"]


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus an option-A shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images, with ``n`` basic blocks per stage."""

    def __init__(
        self, n: int, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, out_planes = residual_stages(_BasicBlock, widths[0], [[planes] * n for planes in widths])
        self.layers = nn.Sequential(*(unit for units in stages for unit in units))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(torch.flatten(self.pool(out), 1))


_SOURCE = (
    "He et al. 2016 (arXiv 1512.03385) sec. 4.2, option-A shortcuts; init as akamaster/pytorch_resnet_cifar10"
)


@register_model("resnet8", description="CIFAR ResNet-8 (n=1), 16/32/64 channels", source=_SOURCE)
def resnet8(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-8 (about 78k parameters)."""
    return CifarResNet(1, num_classes, in_channels)


@register_model("resnet20", description="CIFAR ResNet-20 (n=3), 16/32/64 channels", source=_SOURCE)
def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-20 (0.27M parameters)."""
    return CifarResNet(3, num_classes, in_channels)


@register_model(
    "resnet32",
    description="CIFAR ResNet-32 (n=5), the SAM paper's label-noise network",
    source=_SOURCE,
)
def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-32 (0.46M parameters)."""
    return CifarResNet(5, num_classes, in_channels)
