"""Freezing: only the tuned parts train, and frozen parts stay in eval mode whatever ``model.train()`` says.

A frozen backbone must behave as it did when pretrained: its dropout/DropPath must not fire and any
BatchNorm statistics must not drift. We lock every module outside the tuned set (and not an ancestor of it)
in eval mode by giving that instance a ``train`` method that always means ``train(False)``.
"""

from __future__ import annotations

import types
from collections.abc import Iterable

from torch import nn


def _is_under(name: str, prefixes: Iterable[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def _stays_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze_except(model: nn.Module, tuned: list[str]) -> None:
    """Set ``requires_grad`` from the tuned prefixes and lock all other modules in eval mode."""
    for name, param in model.named_parameters():
        param.requires_grad_(_is_under(name, tuned))
    if "" in tuned:
        return
    ancestors = {p.rsplit(".", i)[0] for p in tuned for i in range(p.count(".") + 1)}
    ancestors |= {""}
    for name, module in model.named_modules():
        if name in ancestors or _is_under(name, tuned):
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if parent in ancestors:  # topmost frozen module: locking it locks its whole subtree
            module.train = types.MethodType(_stays_in_eval, module)
            module.train(False)


def is_locked_in_eval(module: nn.Module) -> bool:
    return getattr(module.train, "__func__", None) is _stays_in_eval
