"""FacT: every weight increment of the blocks factorised with factors shared across the whole model."""

from ..registry import register_method
from .method import FacTTask, FacTTKConfig, FacTTTConfig

register_method(FacTTTConfig, FacTTask)
register_method(FacTTKConfig, FacTTask)

__all__ = ["FacTTKConfig", "FacTTTConfig", "FacTTask"]
