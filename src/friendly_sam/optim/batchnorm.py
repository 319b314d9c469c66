"""Keep BatchNorm running statistics out of the second (perturbed) forward pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers still normalise with batch statistics (training mode) but do
    not update ``running_mean``, ``running_var`` or ``num_batches_tracked``.

    SAM's second forward pass runs at perturbed weights; its batch statistics must not leak into the
    running averages used at test time. Setting ``momentum = 0`` (the common trick) is wrong for
    ``momentum=None`` (cumulative averaging uses ``num_batches_tracked``, which would still advance);
    turning ``track_running_stats`` off for the block is exact for both. Layers are restored on exit,
    also when the block raises.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True
