"""Tuning methods, one package or module each, registered by name (see ``registry``)."""

from .adaptformer import AdaptFormerConfig, AdaptMLP
from .base import BackboneSpec, MethodConfig, Task
from .full import FullConfig
from .linear import LinearConfig
from .registry import METHODS, Method, get_method, make_method_config, method_config_from_dict, register_method
from .vpt import VPTConfig

__all__ = [
    "METHODS",
    "AdaptFormerConfig",
    "AdaptMLP",
    "BackboneSpec",
    "FullConfig",
    "LinearConfig",
    "Method",
    "MethodConfig",
    "Task",
    "VPTConfig",
    "get_method",
    "make_method_config",
    "method_config_from_dict",
    "register_method",
]
