"""Weight initialisations shared by the networks; each network's module docstring says which it uses."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

__all__ = ["initialise_", "kaiming_fan_in_", "kaiming_fan_out_", "normal_fan_out_"]


def kaiming_fan_out_(conv: nn.Conv2d) -> None:
    """Kaiming-normal for a ReLU network, fan-out (torchvision's ResNets)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def kaiming_fan_in_(conv: nn.Conv2d) -> None:
    """Kaiming-normal for a ReLU network, fan-in (the WideResNet of the SAM reference code)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")


def normal_fan_out_(conv: nn.Conv2d) -> None:
    """N(0, 2 / (k * k * out_channels)), written as the PyramidNet and VGG reference code writes it (the same
    distribution as :func:`kaiming_fan_out_`, but not always the same float standard deviation, so not the same draws)."""
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))


def initialise_(model: nn.Module, conv: Callable[[nn.Conv2d], None], zero_classifier: bool = False) -> None:
    """In ``model.modules()`` order: every Conv2d by ``conv``, every BatchNorm2d to weight 1 and bias 0, and
    with ``zero_classifier`` every Linear to weight 0 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            conv(m)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif zero_classifier and isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
