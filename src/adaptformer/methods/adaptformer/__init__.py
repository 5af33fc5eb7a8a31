"""AdaptFormer: AdaptMLP bottlenecks beside the frozen MLPs of a ViT."""

from ..registry import register_method
from .config import AdaptFormerConfig
from .layer import AdaptMLP
from .task import AdaptFormerTask

register_method(AdaptFormerConfig, AdaptFormerTask)

__all__ = ["AdaptFormerConfig", "AdaptFormerTask", "AdaptMLP"]
