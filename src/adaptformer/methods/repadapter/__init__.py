"""RepAdapter: linear adapters before attention and MLP, folded into the frozen weights after training."""

from ..registry import register_method
from .method import GroupedLinearAdapter, RepAdapterConfig, RepAdapterTask

register_method(RepAdapterConfig, RepAdapterTask)

__all__ = ["GroupedLinearAdapter", "RepAdapterConfig", "RepAdapterTask"]
