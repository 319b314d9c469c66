"""Sharpness-aware optimizers: the algorithm as functions (``functional``), a thin two-pass core, one file per
method."""

from .batchnorm import frozen_bn_stats
from .fsam import COMPONENTS, FriendlySAM
from .phase import Phase
from .sam import SAM
from .two_pass import BETWEEN_MODES, NORM_EPS, TwoPassOptimizer

__all__ = [
    "BETWEEN_MODES",
    "COMPONENTS",
    "NORM_EPS",
    "FriendlySAM",
    "Phase",
    "SAM",
    "TwoPassOptimizer",
    "frozen_bn_stats",
]
