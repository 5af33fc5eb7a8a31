"""BitFit: the biases of the frozen blocks train, as per-task offsets."""

from ..registry import register_method
from .config import BitFitConfig
from .task import BiasOffset, BitFitTask

register_method(BitFitConfig, BitFitTask)

__all__ = ["BiasOffset", "BitFitConfig", "BitFitTask"]
