"""CIFAR ResNet-18, as in the official F-SAM code (github nblt/F-SAM, ``models/resnet.py``).

That file is the ResNet of github weiaicunzai/pytorch-cifar100, itself He et al. 2016
(arXiv 1512.03385) adapted to 32x32 inputs: a 3x3 stride-1 stem conv with 64 channels and no
max-pool, four stages of two BasicBlocks (64, 128, 256, 512 channels; stride 2 at the start of
stages 2-4), 1x1-conv + BN projection shortcuts where the shape changes, global average pooling and
a linear classifier. 11,173,962 parameters for 10 classes, 11,220,132 for 100.

Initialisation: the F-SAM code does not re-initialise, so the modules keep PyTorch's default init
(Kaiming-uniform with a=sqrt(5) for conv/linear weights). We keep it too, so that results are
comparable with the published F-SAM ResNet-18 numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .stages import residual_stages

__all__ = ["ResNet18", "resnet18"]


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False),
            nn.BatchNorm2d(planes),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (BasicBlocks [2, 2, 2, 2], 3x3 stem, no max-pool)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        stage_planes = [[planes] * n for planes, n in zip((64, 128, 256, 512), blocks, strict=True)]
        stages, _ = residual_stages(_BasicBlock, 64, stage_planes)
        self.stages = nn.Sequential(*(nn.Sequential(*units) for units in stages))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model(
    "resnet18",
    description="CIFAR ResNet-18 (3x3 stem, no max-pool), F-SAM's main network",
    paper=True,
    source="He et al. 2016; official F-SAM code models/resnet.py (from weiaicunzai/pytorch-cifar100)",
)
def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet18:
    """CIFAR ResNet-18 (11.17M parameters for 10 classes)."""
    return ResNet18(num_classes, in_channels)
