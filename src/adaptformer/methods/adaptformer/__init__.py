"""AdaptFormer: AdaptMLP bottlenecks beside the frozen MLPs of a ViT."""

from .config import AdaptFormerConfig
from .layer import AdaptMLP
from .task import AdaptFormerTask

__all__ = ["AdaptFormerConfig", "AdaptFormerTask", "AdaptMLP"]
