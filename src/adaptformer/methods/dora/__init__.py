"""DoRA: LoRA's update split into a learned magnitude and a direction."""

from ..registry import register_method
from .method import DoRAConfig, DoRATask, DoRAUpdate

register_method(DoRAConfig, DoRATask)

__all__ = ["DoRAConfig", "DoRATask", "DoRAUpdate"]
