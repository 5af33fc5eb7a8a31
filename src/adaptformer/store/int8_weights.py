"""Resident tasks with int8 weights: a task store's opt-in for twice as many resident tasks in the same memory.

``--task-precision int8``: the weight matrix of every ``nn.Linear`` inside a resident task's blocks (AdaptFormer's
Down and Up, LoRA's A and B, the bottlenecks of the other adapters) is held as int8 with one fp32 scale per row or
per column, whichever there are fewer of (symmetric, rounded to nearest: ``w ≈ q · max|w| / 127`` over each): for
a low-rank pair that is one scale per bottleneck unit, over the model's width. Its bias and every other tensor
inside the blocks (prompts, norms, scales) are held in the serving precision, as ``--task-precision auto`` holds
them; heads keep the backbone's precision. A ViT-B AdaptFormer-64 task takes 1.2 MB instead of 2.4 MB (bf16) or
4.8 MB (fp32).

The matrix is made again in the serving precision whenever the task's computation reads ``weight`` (once per block
and batch: the forward of a task's own rows, or the router's packed branches of a mixed batch) and dropped after,
so what stays resident is the int8 form. This is lossy: one rounding to 1/254 of the largest value sharing its
scale, where bf16 rounds each value to 1/512 of itself; the answers it gives beside bf16 and fp32 residency are
measured by ``benchmarks/task_precision.py`` (docs/serving.md). A task loaded outside a store is never quantized.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..methods.base import Task

#: bytes of one scale
SCALE_BYTES = 4


def held_as_int8(key: str, shape: tuple[int, ...] | torch.Size) -> bool:
    """Whether a task file's tensor is held as int8 by a store with int8 weights: a Linear layer's weight matrix
    inside the blocks (the rule ``estimate_bytes`` sizes a file by, before its modules exist)."""
    return key.startswith("blocks.") and key.endswith(".weight") and len(shape) == 2


def int8_bytes(shape: tuple[int, ...] | torch.Size) -> int:
    """Memory of a (rows, columns) matrix held as int8 with one scale per row or column, the fewer."""
    return math.prod(shape) + min(shape) * SCALE_BYTES


def scale_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """The shape of a matrix's scales, broadcast against it: (rows, 1) or, with more rows than columns, (1, columns)."""
    rows, columns = shape
    return (1, columns) if rows > columns else (rows, 1)


def quantized(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (rows, columns) as int8 and its fp32 scales (``scale_shape``): symmetric, rounded to nearest."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=0 if scale_shape(weight.shape)[0] == 1 else 1, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: any scale gives zeros
    return torch.round(weight / scale).clamp_(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A resident task's ``nn.Linear`` whose weight is held as int8 with fp32 scales (``scale_shape``).

    ``weight`` is the matrix in ``compute_dtype``, made when read; ``bias`` is held in ``compute_dtype``."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        values, scale = quantized(linear.weight)
        self.register_buffer("weight_int8", values)
        self.register_buffer("weight_scale", scale)
        bias = linear.bias
        self.bias = nn.Parameter(bias.detach().to(compute_dtype), requires_grad=False) if bias is not None else None

    @property
    def weight(self) -> torch.Tensor:
        return (self.weight_int8 * self.weight_scale).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if not torch.is_autocast_enabled(x.device.type) and x.dtype != weight.dtype:
            weight, bias = weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight, {self.compute_dtype}"


def with_int8_weights(task: Task, compute_dtype: torch.dtype, shared_hooks: dict[str, object] | None = None) -> Task:
    """``task`` as a store with int8 weights keeps it, changed in place: each ``nn.Linear`` inside its blocks an
    ``Int8Linear`` (quantized from the tensors it holds, best fp32 as read from the file), every other floating
    tensor inside its blocks in ``compute_dtype``, and every tensor its own bytes (those read from a file are views
    of the one buffer it was read into, which a head's few KB would otherwise keep whole). ``shared_hooks``: hook
    tables the new modules take (a store's tasks share one empty, read-only table: ``templates.py``)."""
    blocks = getattr(task, "blocks", None)
    made = _quantize_blocks(blocks, compute_dtype, shared_hooks) if blocks is not None else set()
    for module in task.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None and id(tensor) not in made:
                    table[name] = _replaced(tensor, tensor.detach().clone())
    return task


def _replaced(old: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return nn.Parameter(value, requires_grad=False) if isinstance(old, nn.Parameter) else value


def _quantize_blocks(blocks: nn.Module, compute_dtype: torch.dtype, shared_hooks: dict[str, object] | None) -> set[int]:
    """The blocks' Linear layers as ``Int8Linear``, their other floating tensors cast; the ids of the new tensors."""
    made: set[int] = set()
    for module in list(blocks.modules()):
        for name, child in list(module._modules.items()):
            if type(child) is nn.Linear:
                replacement = Int8Linear(child, compute_dtype)
                if shared_hooks:
                    vars(replacement).update(shared_hooks)
                module._modules[name] = replacement
                made.update(id(t) for t in (*replacement.parameters(), *replacement.buffers()))
    for module in blocks.modules():
        if isinstance(module, Int8Linear):
            continue
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None and tensor.is_floating_point() and tensor.dtype != compute_dtype:
                    table[name] = _replaced(tensor, tensor.detach().to(compute_dtype))
                    made.add(id(table[name]))
    return made
