"""BitFit: the biases of the frozen blocks train, as per-task offsets."""

from .config import BitFitConfig
from .task import BiasOffset, BitFitTask

__all__ = ["BiasOffset", "BitFitConfig", "BitFitTask"]
