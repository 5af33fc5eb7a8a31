"""Tuning methods, one package or module each, registered by name (see ``registry``)."""

from .adapterplus import AdapterPlusConfig
from .adaptformer import AdaptFormerConfig, AdaptMLP
from .base import BackboneSpec, MethodConfig, Task
from .bitfit import BitFitConfig
from .convpass import ConvpassConfig
from .dora import DoRAConfig
from .fact import FacTTKConfig, FacTTTConfig
from .full import FullConfig
from .houlsby import HoulsbyConfig
from .linear import LinearConfig
from .lntune import LNTuneConfig
from .lora import LoRAConfig
from .pfeiffer import PfeifferConfig
from .registry import (
    METHODS,
    Method,
    get_method,
    make_method_config,
    method_config_from_dict,
    method_names,
    register_method,
    registered_methods,
)
from .repadapter import RepAdapterConfig
from .ssf import SSFConfig
from .vpt import VPTConfig

__all__ = [
    "METHODS",
    "AdaptFormerConfig",
    "AdaptMLP",
    "AdapterPlusConfig",
    "BackboneSpec",
    "BitFitConfig",
    "ConvpassConfig",
    "DoRAConfig",
    "FacTTKConfig",
    "FacTTTConfig",
    "FullConfig",
    "HoulsbyConfig",
    "LNTuneConfig",
    "LinearConfig",
    "LoRAConfig",
    "Method",
    "MethodConfig",
    "PfeifferConfig",
    "RepAdapterConfig",
    "SSFConfig",
    "Task",
    "VPTConfig",
    "get_method",
    "make_method_config",
    "method_config_from_dict",
    "method_names",
    "register_method",
    "registered_methods",
]
