"""Convpass: convolutional bypasses beside the attention and the MLP, on the patch grid."""

from ..registry import register_method
from .method import ConvBypass, ConvpassConfig, ConvpassTask

register_method(ConvpassConfig, ConvpassTask)

__all__ = ["ConvBypass", "ConvpassConfig", "ConvpassTask"]
