"""LoRA: low-rank updates beside the frozen linear layers of a ViT's blocks."""

from .config import LoRAConfig
from .task import LoRATask, LoRAUpdate

__all__ = ["LoRAConfig", "LoRATask", "LoRAUpdate"]
