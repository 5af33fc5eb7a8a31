"""Visual Prompt Tuning (deep and shallow), the paper's prompt baseline."""

from .config import VPTConfig
from .task import VPTTask

__all__ = ["VPTConfig", "VPTTask"]
