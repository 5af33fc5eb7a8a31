"""Visual Prompt Tuning (deep and shallow), the paper's prompt baseline."""

from ..registry import register_method
from .config import VPTConfig
from .task import VPTTask

register_method(VPTConfig, VPTTask)

__all__ = ["VPTConfig", "VPTTask"]
