"""Sharpness-aware optimizers: a shared two-pass core, one file per method."""

from .batchnorm import frozen_bn_stats
from .fsam import FriendlySAM
from .sam import SAM
from .two_pass import TwoPassOptimizer

__all__ = ["FriendlySAM", "SAM", "TwoPassOptimizer", "frozen_bn_stats"]
