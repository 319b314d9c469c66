"""``cnn_small``: a three-conv network for very quick tests and CPU experiments.

Not from a paper: conv3x3(32)-BN-ReLU-maxpool, conv3x3(64)-BN-ReLU-maxpool, conv3x3(128)-BN-ReLU,
global average pooling, linear classifier; about 94k parameters. It has BatchNorm on purpose, so
that tests of SAM-style optimizers exercise the BN-statistics handling. Kaiming-normal (fan_out)
conv init as in torchvision's ResNets.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["SmallCNN", "cnn_small"]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU layers, global average pooling and a linear layer."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, w in enumerate(widths):
            layers += [
                nn.Conv2d(channels, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            channels = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@register_model(
    "cnn_small",
    description="3 conv-BN-ReLU layers + linear, ~94k params, for quick tests",
    source="friendly-sam (not from a paper)",
)
def cnn_small(num_classes: int = 10, in_channels: int = 3) -> SmallCNN:
    """Small CNN for quick tests."""
    return SmallCNN(num_classes, in_channels)
