"""friendly-sam: Friendly Sharpness-Aware Minimization (F-SAM), SAM and ASAM for PyTorch."""

from .optim import SAM, FriendlySAM, TwoPassOptimizer, frozen_bn_stats

__version__ = "0.1.0"
__all__ = ["FriendlySAM", "SAM", "TwoPassOptimizer", "frozen_bn_stats", "__version__"]
