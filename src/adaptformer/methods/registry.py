"""Methods by name. Each entry pairs a typed config (its options) with the Task class that implements it;
``adaptformer methods`` (and the README's methods table) lists what each adds and trains.

``register_method(Config, Task)`` adds one: a package under ``methods/`` listed in ``BUILTIN_MODULES``, or any
importable package of the user's, named in the environment variable ``ADAPTFORMER_PLUGINS`` (comma-separated
modules) or declared as an entry point in the group ``adaptformer.methods``; plugins are imported the first time
the registry is asked for its methods. Nothing outside a method's package knows it by name: everything the
rest of the code asks (its label, its options, whether it shares the backbone or keeps cached features, its tune
axes and learning rates, its benchmark options, whether it merges) is on its config and task classes.

The flat option namespace used by YAML files and command-line flags is the union of every method's config fields
(:func:`method_option_fields`); a name two methods share (``layers``, ``head_batchnorm``) must mean the same there.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ..errors import AdaptFormerError
from .base import MethodConfig, Task


@dataclass(frozen=True)
class Method:
    name: str
    config: type[MethodConfig]
    task: type[Task]

    @property
    def description(self) -> str:
        return (self.config.__doc__ or "").strip().splitlines()[0]


#: every registered method by name; read it through :func:`registered_methods` (which imports plugins first)
METHODS: dict[str, Method] = {}
#: the packages that register the methods this project ships (imported on first use, as datasets are)
BUILTIN_MODULES = (
    "adaptformer.methods.adaptformer",
    "adaptformer.methods.linear",
    "adaptformer.methods.vpt",
    "adaptformer.methods.lora",
    "adaptformer.methods.bitfit",
    "adaptformer.methods.ssf",
    "adaptformer.methods.lntune",
    "adaptformer.methods.dora",
    "adaptformer.methods.repadapter",
    "adaptformer.methods.fact",
    "adaptformer.methods.houlsby",
    "adaptformer.methods.pfeiffer",
    "adaptformer.methods.adapterplus",
    "adaptformer.methods.convpass",
    "adaptformer.methods.full",
)
PLUGINS_VARIABLE = "ADAPTFORMER_PLUGINS"
ENTRY_POINT_GROUP = "adaptformer.methods"
_plugins_loaded = False


def register_method(config: type[MethodConfig], task: type[Task]) -> Method:
    """Make a method known by ``config.name`` everywhere (train, tune, benchmark, task files, the server)."""
    if not config.name or not config.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"{config.__name__} must set the class variable `name` (letters, digits, - and _)")
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise ValueError(f"{config.name}: the task class must subclass adaptformer.methods.Task")
    METHODS[config.name] = method = Method(config.name, config, task)
    return method


def registered_methods() -> dict[str, Method]:
    """Every method, the plugins' included (imported once, on first use): the built-in ones in the order of
    ``BUILTIN_MODULES`` (the methods table's), then the others in the order they registered."""
    load_plugins()
    rank = {module: i for i, module in enumerate(BUILTIN_MODULES)}
    home = {name: ".".join(m.config.__module__.split(".")[:3]) for name, m in METHODS.items()}  # its package
    order = sorted(METHODS, key=lambda name: rank.get(home[name], len(rank)))
    return {name: METHODS[name] for name in order}


def method_names() -> list[str]:
    return list(registered_methods())


def load_plugins() -> None:
    """Import the built-in method packages, then the modules named in ``ADAPTFORMER_PLUGINS`` and the
    ``adaptformer.methods`` entry points (importing them registers their methods). A module that cannot be
    imported is one line naming it and where it was named."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    names = [n.strip() for n in os.environ.get(PLUGINS_VARIABLE, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any failure of a user's module is reported the same way
            raise AdaptFormerError(
                f"{PLUGINS_VARIABLE}: cannot import {name!r} ({type(error).__name__}: {error})"
            ) from None
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as error:  # noqa: BLE001
            raise AdaptFormerError(
                f"entry point {entry.name} ({entry.value}) in {ENTRY_POINT_GROUP}: cannot load it "
                f"({type(error).__name__}: {error})"
            ) from None


def get_method(name: str) -> Method:
    load_plugins()
    if name not in METHODS:  # the lookup needs no order; only the message lists them, in the table's order
        raise AdaptFormerError(f"method: expected one of {', '.join(method_names())}, got {name!r}")
    return METHODS[name]


def option_names(method: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_method(method).config)]


def make_method_config(method: str = "adaptformer", **options: Any) -> MethodConfig:
    """``make_method_config("adaptformer", bottleneck=16)``; an option the method does not have is an error."""
    known = option_names(method)
    unknown = sorted(set(options) - set(known))
    if unknown:
        owners = {name: methods_with_option(name) for name in unknown}
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
    for method in registered_methods().values():
        hints = typing.get_type_hints(method.config)
        for f in dataclasses.fields(method.config):
            if f.name in merged and merged[f.name][1] != hints[f.name]:
                raise TypeError(f"option {f.name} has different types in two methods")
            merged.setdefault(f.name, (f, hints[f.name]))
    return merged


def methods_with_option(name: str) -> list[str]:
    return [m for m in registered_methods() if name in option_names(m)]


def benchmark_default_methods() -> list[str]:
    """What ``benchmark`` runs without ``--methods``."""
    return [name for name, method in registered_methods().items() if method.config.benchmark_default]
