"""Houlsby adapters: a sequential bottleneck after the attention and after the MLP of every block."""

from ..registry import register_method
from .method import HoulsbyConfig, HoulsbyTask

register_method(HoulsbyConfig, HoulsbyTask)

__all__ = ["HoulsbyConfig", "HoulsbyTask"]
