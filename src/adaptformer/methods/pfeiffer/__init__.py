"""Pfeiffer adapters: a LayerNorm'd bottleneck on the output of every block."""

from ..registry import register_method
from .method import PfeifferConfig, PfeifferTask

register_method(PfeifferConfig, PfeifferTask)

__all__ = ["PfeifferConfig", "PfeifferTask"]
