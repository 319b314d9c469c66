"""Wide Residual Networks (WRN-d-k), default WRN-28-10.

Architecture from Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016, arXiv 1605.07146):
a 3x3 stem conv with 16 channels, three stages of ``(d - 4) / 6`` pre-activation residual units
(BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3) with 16k, 32k, 64k channels, a 1x1 conv shortcut on the
first unit of each stage (stride 2 in stages 2 and 3), a final BN-ReLU, global average pooling
and a linear classifier. WRN-28-10 has 36.5M parameters (paper, Table 1), here 36,479,194 for
10 classes. Dropout defaults to 0 as in the SAM / F-SAM experiments.

Module layout and init follow the WRN of the SAM reference implementation (github davda54/sam,
``example/model/wide_res_net.py``), which the official F-SAM code copies: Kaiming-normal (fan_in)
convs, BN weight 1 / bias 0, and a zero-initialised classifier.

Caveat on the F-SAM code: its ``WideResNet28x10`` builds a downsampling unit *plus*
``(28 - 4) // 6 = 4`` further units per stage, i.e. 5 units per stage, which is the layer layout of
WRN-34-10 (about 46.2M parameters). ``wrn28_10`` here is the WRN-28-10 of the literature
(4 units per stage); ``WideResNet(depth=34, width_factor=10)`` gives the F-SAM code's layout.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model
from .stages import residual_stages
from .weight_init import initialise_, kaiming_fan_in_

__all__ = ["WideResNet", "wrn28_10"]


class _Unit(nn.Module):
    """Pre-activation residual unit; the first unit of a stage has a 1x1 conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        # As in the WRN paper's code, the projection shortcut sees the pre-activated input.
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-``depth``-``width_factor``; ``depth`` must be 6n+4."""

    def __init__(
        self,
        depth: int = 28,
        width_factor: int = 10,
        dropout: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * width_factor, 32 * width_factor, 64 * width_factor)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        stages, out_planes = residual_stages(
            lambda in_planes, planes, stride: _Unit(in_planes, planes, stride, dropout),
            16,
            [[planes] * n for planes in widths],
        )
        self.units = nn.Sequential(*(unit for units in stages for unit in units))
        self.bn = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_planes, num_classes)
        initialise_(self, kaiming_fan_in_, zero_classifier=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.units(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model(
    "wrn28_10",
    description="WideResNet-28-10 (dropout 0 by default; kwarg dropout=...)",
    paper=True,
    source="Zagoruyko & Komodakis 2016 (arXiv 1605.07146); layout/init of davda54/sam as in F-SAM code",
)
def wrn28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WideResNet-28-10 (36.5M parameters)."""
    return WideResNet(28, 10, dropout, num_classes, in_channels)
