"""LayerNorm tuning: only the affine parameters of the blocks' norms train."""

from ..registry import register_method
from .method import LNTuneConfig, LNTuneTask, NormAffineDelta

register_method(LNTuneConfig, LNTuneTask)

__all__ = ["LNTuneConfig", "LNTuneTask", "NormAffineDelta"]
