"""Methods by name. Each entry pairs a typed config (its options) with the Task class that implements it.

=============  ==========================================  ==============================
method         adds                                        trains
=============  ==========================================  ==============================
adaptformer    an AdaptMLP beside the MLP of chosen blocks  adapters + head (+ fc_norm)
linear         nothing                                     head (+ fc_norm)
vpt            prompt tokens (deep, shallow or kv)         prompts + head (+ fc_norm)
lora           s·B·A beside qkv (and proj, fc1, fc2)       A, B + head (+ fc_norm)
bitfit         an offset on every bias of the blocks       bias offsets + head (+ fc_norm)
ssf            a scale and shift after each operation      scales, shifts + head (+ fc_norm)
full           nothing                                     everything
=============  ==========================================  ==============================

``register_method`` adds one (a new package under ``methods/``). The flat option namespace used by YAML files
and command-line flags is the union of every method's config fields (:func:`method_option_fields`); a name
two methods share (``layers``, ``head_batchnorm``) must mean the same there.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from ..errors import AdaptFormerError
from .adaptformer import AdaptFormerConfig, AdaptFormerTask
from .base import MethodConfig, Task
from .bitfit import BitFitConfig, BitFitTask
from .full import FullConfig, FullTask
from .linear import LinearConfig, LinearTask
from .lora import LoRAConfig, LoRATask
from .ssf import SSFConfig, SSFTask
from .vpt import VPTConfig, VPTTask


@dataclass(frozen=True)
class Method:
    name: str
    config: type[MethodConfig]
    task: type[Task]

    @property
    def description(self) -> str:
        return (self.config.__doc__ or "").strip().splitlines()[0]


METHODS: dict[str, Method] = {}


def register_method(config: type[MethodConfig], task: type[Task]) -> Method:
    if not config.name:
        raise ValueError(f"{config.__name__} must set the class variable `name`")
    METHODS[config.name] = method = Method(config.name, config, task)
    return method


for _config, _task in (
    (AdaptFormerConfig, AdaptFormerTask),
    (LinearConfig, LinearTask),
    (VPTConfig, VPTTask),
    (LoRAConfig, LoRATask),
    (BitFitConfig, BitFitTask),
    (SSFConfig, SSFTask),
    (FullConfig, FullTask),
):
    register_method(_config, _task)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise AdaptFormerError(f"method: expected one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


def option_names(method: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_method(method).config)]


def make_method_config(method: str = "adaptformer", **options: Any) -> MethodConfig:
    """``make_method_config("adaptformer", bottleneck=16)``; an option the method does not have is an error."""
    known = option_names(method)
    unknown = sorted(set(options) - set(known))
    if unknown:
        owners = {name: [m for m in METHODS if name in option_names(m)] for name in unknown}
        detail = "; ".join(
            f"{name} is an option of {', '.join(owners[name])}" if owners[name] else f"{name} is no method's option"
            for name in unknown
        )
        raise AdaptFormerError(
            f"method {method}: unknown option(s) {', '.join(unknown)} ({detail}); its options are {', '.join(known)}"
        )
    try:
        return get_method(method).config(**options)
    except TypeError as error:
        raise AdaptFormerError(f"method {method}: {error}") from None


def method_config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """The inverse of ``MethodConfig.to_dict()``."""
    data = dict(data)
    return make_method_config(data.pop("method", "adaptformer"), **data)


def method_option_fields() -> dict[str, tuple[dataclasses.Field, Any]]:
    """Every method option by name -> (field, resolved type), checking shared names agree."""
    merged: dict[str, tuple[dataclasses.Field, Any]] = {}
    for method in METHODS.values():
        hints = typing.get_type_hints(method.config)
        for f in dataclasses.fields(method.config):
            if f.name in merged and merged[f.name][1] != hints[f.name]:
                raise TypeError(f"option {f.name} has different types in two methods")
            merged.setdefault(f.name, (f, hints[f.name]))
    return merged


def methods_with_option(name: str) -> list[str]:
    return [m for m in METHODS if name in option_names(m)]
