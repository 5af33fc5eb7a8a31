"""LoRA: low-rank updates beside the frozen linear layers of a ViT's blocks."""

from ..registry import register_method
from .config import LoRAConfig
from .task import LoRATask, LoRAUpdate

register_method(LoRAConfig, LoRATask)

__all__ = ["LoRAConfig", "LoRATask", "LoRAUpdate"]
