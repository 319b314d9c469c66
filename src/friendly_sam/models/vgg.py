"""CIFAR VGG-16 with BatchNorm (VGG16-BN).

Architecture from Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition" (ICLR 2015, arXiv 1409.1556), configuration D with BatchNorm after every conv, in the
CIFAR form used by the SWA code (github timgaripov/swa, ``models/vgg.py``) and the F-SAM authors'
code bases (github nblt/TWA ``models/vgg.py``; F-SAM's own ``vgg.py`` is not public in source form,
only its compiled cache, so this is the closest published source): 13 conv3x3 layers
(64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M), then a classifier
Dropout-Linear(512, 512)-ReLU-Dropout-Linear(512, 512)-ReLU-Linear(512, classes).
15,253,578 parameters for 10 classes. Init: conv weights N(0, 2 / (k*k*out_channels))
(Kaiming-normal, fan_out), conv biases 0; BN and linear layers keep PyTorch defaults.

Input sizes: the first four max-pools use ``ceil_mode=True`` and the last one is a global max-pool.
On 32x32 inputs this is exactly the original network (all sizes are even, the last map is 2x2);
on 28x28 inputs the maps are 28-14-7-4-2-1 instead of collapsing to 0x0.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model
from .weight_init import normal_fan_out_

__all__ = ["VGG", "vgg16_bn"]

# fmt: off
_CFG16: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                           512, 512, 512, "M", 512, 512, 512, "M"]
# fmt: on


class VGG(nn.Module):
    """CIFAR VGG with a 512-512 classifier, optionally with BatchNorm."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        cfg: list[int | str] | None = None,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        cfg = _CFG16 if cfg is None else cfg
        layers: list[nn.Module] = []
        channels = in_channels
        n_pools = cfg.count("M")
        seen_pools = 0
        for v in cfg:
            if v == "M":
                seen_pools += 1
                if seen_pools == n_pools:
                    layers.append(nn.AdaptiveMaxPool2d(1))
                else:
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                assert isinstance(v, int)
                layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(nn.ReLU(inplace=True))
                channels = v
        if seen_pools == 0 or cfg[-1] != "M":
            layers.append(nn.AdaptiveMaxPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(channels, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                normal_fan_out_(m)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    "vgg16_bn",
    description="CIFAR VGG16 with BatchNorm, 512-512 dropout classifier",
    paper=True,
    source="Simonyan & Zisserman 2015; CIFAR form of timgaripov/swa and nblt/TWA models/vgg.py",
)
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """CIFAR VGG16-BN (15.25M parameters for 10 classes)."""
    return VGG(num_classes, in_channels, _CFG16, batch_norm=True)
