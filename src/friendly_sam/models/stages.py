"""The stage layout shared by the residual networks (CIFAR and ImageNet ResNets, WideResNet, PyramidNet).

A residual network is a sequence of stages of units; the first unit of every stage but the first halves the
resolution (stride 2), and each unit's input has the channels of the previous unit's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["residual_stages"]


def residual_stages(
    unit: Callable[[int, int, int], nn.Module],
    in_planes: int,
    stage_planes: Sequence[Sequence[int]],
    expansion: int = 1,
) -> tuple[list[list[nn.Module]], int]:
    """The units of every stage, built in order: unit ``j`` of stage ``i`` is
    ``unit(in_planes, stage_planes[i][j], stride)``, ``stride`` 2 for ``j == 0 < i`` and 1 elsewhere, and it
    outputs ``planes * expansion`` channels, the next unit's ``in_planes``.

    Returns the units of each stage and the channels of the last unit's output.
    """
    stages: list[list[nn.Module]] = []
    for i, planes_of_stage in enumerate(stage_planes):
        units = []
        for j, planes in enumerate(planes_of_stage):
            units.append(unit(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
            in_planes = planes * expansion
        stages.append(units)
    return stages, in_planes
