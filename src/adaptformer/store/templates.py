"""Task templates: a task store's tasks built fast, a copy of one built task per kind that holds a file's tensors.

Building a task module (a dozen adapters, a head) and loading a file into it with ``load_state_dict`` costs a few
milliseconds of Python each time: at ten thousand tasks behind a 64-task cache that is most of the cost of a cache
miss. Every task of one kind (method options, number of classes, objective) has the same structure, so a template
of the kind is built once on the meta device; a task of that kind is then a structural copy of it (new module
objects, their own containers) whose parameters and buffers are the file's tensors, checked as
``load_task_state`` checks them. The copy runs on the I/O thread with the file read.

A module carries eleven hook tables (forward, backward, state-dict hooks), empty in every task: as copies they
were 100 KB of the 170 KB of Python objects a resident AdaptFormer task of ViT-B costs beside its tensors (77
modules), 16 % of an AdaptFormer-16 task's bf16 tensors. The copies share one empty, read-only table instead
(``SHARED_EMPTY_HOOKS``): registering a hook on a module of a store's task, or of a copy of one, fails in one
line; a task loaded with ``adaptformer.load_task`` takes hooks as any module does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapted.model import AdaptedModel, check_task_tensors
from ..errors import AdaptFormerError
from ..methods.base import Task
from ..tasks.files import all_placed, prepared_task
from ..tasks.format import method_config_of

_CONTAINERS = (dict, OrderedDict, set, list)
#: nn.Module's hook tables (``_forward_hooks``, ``_state_dict_pre_hooks``, ...), as this torch names them
MODULE_HOOK_TABLES = frozenset(k for k, v in vars(nn.Module()).items() if isinstance(v, OrderedDict) and "hooks" in k)


class _EmptyHookTable(OrderedDict):
    """The hook table every module of a store's tasks shares: empty, refusing every change."""

    def _refuse(self, *args, **kwargs):
        raise AdaptFormerError(
            "this module belongs to a task held by a task store, whose modules share one empty hook table: "
            "register hooks on the task loaded with adaptformer.load_task instead"
        )

    __setitem__ = __delitem__ = __ior__ = pop = popitem = clear = update = setdefault = move_to_end = _refuse

    # it cannot change, so a copy is itself: a fresh table per copy would be one table for all eleven attributes
    # and every module of a deep-copied task (copy and pickle keep one copy per object), so a hook registered on
    # one module would run as every kind of hook of all of them
    def copy(self) -> _EmptyHookTable:
        return self

    __copy__ = copy

    def __deepcopy__(self, memo) -> _EmptyHookTable:
        return self

    def __reduce__(self):
        return (_shared_empty_hooks, ())


def _shared_empty_hooks() -> _EmptyHookTable:
    return SHARED_EMPTY_HOOKS


SHARED_EMPTY_HOOKS = _EmptyHookTable()


class TaskTemplates:
    """Templates of the kinds of task a store has loaded lately (a bounded LRU), for one model."""

    def __init__(self, model: AdaptedModel, block_dtype: torch.dtype | None, capacity: int = 64):
        self.model, self.block_dtype, self.capacity = model, block_dtype, capacity
        self._templates: OrderedDict[str, tuple[list[_Node] | None, dict[str, torch.Tensor]]] = OrderedDict()
        self._lock = threading.Lock()  # the I/O thread (prefetch) and the model thread both build

    def task(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: str | Path) -> Task:
        """The task a file describes, holding ``tensors`` (placed as ``tasks.files.placed`` says); one-line errors."""
        config = method_config_of(meta, path)
        classes, objective = list(meta["classes"]), meta.get("objective") or "classification"
        plan, expected = self._template(config, classes, objective)
        if plan is None:  # a kind whose state dict renames its modules' tensors: built and loaded as usual
            return prepared_task(self.model, meta, tensors, path, self.block_dtype)
        check_task_tensors(expected, tensors, f"task file {path}")
        reference = next(self.model.backbone.parameters())
        task = _filled_copy(plan, all_placed(tensors, reference, self.block_dtype), reference)
        task.classes = classes
        return task

    def _template(
        self, config, classes: list[str], objective: str
    ) -> tuple[list[_Node] | None, dict[str, torch.Tensor]]:
        key = f"{config!r}|{len(classes)}|{objective}"
        with self._lock:
            found = self._templates.get(key)
            if found is not None:
                self._templates.move_to_end(key)
                return found
        template = self.model.build_task(config, classes, objective=objective, empty=True)
        expected = dict(template.state_dict(keep_vars=True))
        held = {n for n, _ in template.named_parameters()} | {
            f"{owner}.{n}".lstrip(".")
            for owner, module in template.named_modules()
            for n in module._buffers
            if n not in module._non_persistent_buffers_set
        }
        found = (_plan(template) if held == set(expected) else None, expected)
        with self._lock:
            self._templates[key] = found
            while len(self._templates) > self.capacity:
                self._templates.popitem(last=False)
        return found


@dataclass(frozen=True)
class _Node:
    """One module of a template, as its copies are made: its class and attributes, which of those are
    containers to copy, and where its tensors and children come from."""

    cls: type
    state: dict[str, Any]
    containers: tuple[str, ...]
    shared: tuple[str, ...]  # empty hook tables: SHARED_EMPTY_HOOKS in every copy
    parameters: tuple[tuple[str, str], ...]  # (attribute, state-dict key)
    buffers: tuple[tuple[str, str, torch.Size], ...]  # (attribute, state-dict key, shape)
    children: tuple[tuple[str, int | None], ...]  # (attribute, index of the child's node)


def _plan(template: nn.Module) -> list[_Node]:
    """The template's modules in order, each once (a module used twice stays one module in every copy)."""
    nodes: list[_Node] = []
    seen: dict[int, int] = {}

    def visit(module: nn.Module, prefix: str) -> int:
        if id(module) in seen:
            return seen[id(module)]
        index = seen[id(module)] = len(nodes)
        nodes.append(None)  # its place, filled once its children have theirs
        state = module.__dict__
        children = tuple(
            (name, visit(child, f"{prefix}{name}.") if child is not None else None)
            for name, child in module._modules.items()
        )
        nodes[index] = _Node(
            type(module),
            state,
            tuple(key for key, value in state.items() if type(value) in _CONTAINERS and not _shared(key, value)),
            tuple(key for key, value in state.items() if _shared(key, value)),
            tuple((name, prefix + name) for name, p in module._parameters.items() if p is not None),
            tuple((name, prefix + name, b.shape) for name, b in module._buffers.items() if b is not None),
            children,
        )
        return index

    visit(template, "")
    return nodes


def _shared(key: str, value: Any) -> bool:
    return key in MODULE_HOOK_TABLES and isinstance(value, OrderedDict) and not value


def _filled_copy(plan: list[_Node], tensors: dict[str, torch.Tensor], reference: torch.Tensor) -> nn.Module:
    """A copy of the planned template (new module objects with their own dicts of hooks, parameters, buffers and
    children; other attributes shared, as a frozen config is) whose parameters and buffers are ``tensors``, named
    as in its state dict. A buffer no file holds (non-persistent: zeros by definition) is zeros on ``reference``'s
    device and in its precision."""
    clones = [object.__new__(node.cls) for node in plan]
    for node, clone in zip(plan, clones, strict=True):
        state = node.state.copy()
        for key in node.containers:
            state[key] = state[key].copy()
        for key in node.shared:
            state[key] = SHARED_EMPTY_HOOKS
        vars(clone).update(state)  # not nn.Module.__setattr__: nothing to register, the containers are copied
        for name, key in node.parameters:
            clone._parameters[name] = nn.Parameter(tensors[key], requires_grad=False)
        for name, key, shape in node.buffers:
            held = tensors.get(key)
            clone._buffers[name] = (
                held if held is not None else torch.zeros(shape, dtype=reference.dtype, device=reference.device)
            )
        for name, index in node.children:
            clone._modules[name] = clones[index] if index is not None else None
    return clones[0]
