"""Adapter+: a bottleneck after every block with a learned scale per channel."""

from ..registry import register_method
from .method import AdapterPlusConfig, AdapterPlusTask

register_method(AdapterPlusConfig, AdapterPlusTask)

__all__ = ["AdapterPlusConfig", "AdapterPlusTask"]
