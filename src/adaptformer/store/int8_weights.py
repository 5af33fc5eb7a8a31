"""Resident tasks with int8 weights: a task store's opt-in for twice as many resident tasks in the same memory.

``--task-precision int8``: the weight matrix of every ``nn.Linear`` inside a resident task's blocks (AdaptFormer's
Down and Up, LoRA's A and B, the bottlenecks of the other adapters) is held as int8 with one fp32 scale per row or
per column, whichever there are fewer of (symmetric, rounded to nearest: ``w ≈ q · max|w| / 127`` over each): for
a low-rank pair that is one scale per bottleneck unit, over the model's width. Its bias and every other tensor
inside the blocks (prompts, norms, scales) are held in the serving precision, as ``--task-precision auto`` holds
them; heads keep the backbone's precision. A ViT-B AdaptFormer-64 task takes 1.19 MB instead of 2.30 MB (bf16) or
4.6 MB (fp32).

The matrix is made again in the serving precision whenever the task's computation reads ``weight`` (once or twice
per block and batch: the forward of a task's own rows, the router's packed branches of a mixed batch, DoRA's norm)
and dropped after, so what stays resident is the int8 form. This is lossy: one rounding to 1/254 of the largest
value sharing its scale, where bf16 rounds each value to 1/512 of itself; the answers it gives beside bf16 and
fp32 residency are measured by ``benchmarks/task_precision.py`` (docs/serving.md). A task loaded outside a task
store (``load_task``, ``apply_task``) is never quantized.
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


def _scales_per_column(shape: tuple[int, ...] | torch.Size) -> bool:
    """Whether a matrix (or a stack of them: the last two dimensions) takes one scale per column: with more rows
    than columns. A (1, n) matrix takes one scale, not n."""
    rows, columns = shape[-2:]
    return rows > columns


def scale_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """The shape of a matrix's scales, broadcast against it: (rows, 1) or, with more rows than columns, (1, columns)."""
    rows, columns = shape
    return (1, columns) if _scales_per_column(shape) else (rows, 1)


def quantized(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (rows, columns), or a stack of such, as int8 and its fp32 scales (``scale_shape``): symmetric,
    rounded to nearest."""
    weight = weight.detach().float()
    per_column = _scales_per_column(weight.shape)
    # each scale's values made contiguous first: a reduction across rows ran 4x slower than this copy and one along
    grouped = weight.transpose(-1, -2).contiguous() if per_column else weight
    scale = grouped.abs().amax(dim=-1, keepdim=True).div_(127)
    scale = scale.transpose(-1, -2).contiguous() if per_column else scale
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: any scale gives zeros
    return torch.div(weight, scale).round_().clamp_(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A resident task's ``nn.Linear`` whose weight is held as int8 with fp32 scales (``scale_shape``).

    ``weight`` is the matrix in ``compute_dtype``, made when read; ``bias`` is held in ``compute_dtype``."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype):
        super().__init__()
        values, scale = quantized(linear.weight)
        self._hold(values, scale, linear.bias, compute_dtype)

    @classmethod
    def holding(
        cls, values: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, compute_dtype: torch.dtype
    ) -> Int8Linear:
        """The layer of already quantized ``values`` and ``scale`` (a store quantizes a task's matrices of one
        shape together)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._hold(values, scale, bias, compute_dtype)
        return layer

    def _hold(self, values: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        # written into the module's tables directly: a store builds two dozen of these per task it loads
        vars(self).update(in_features=values.shape[1], out_features=values.shape[0], compute_dtype=dtype)
        self._buffers.update(weight_int8=values, weight_scale=scale)
        held = bias.detach().to(dtype, copy=True) if bias is not None else None
        self._parameters["bias"] = nn.Parameter(held, requires_grad=False) if held is not None else None

    @property
    def weight(self) -> torch.Tensor:
        # one kernel: the product computed in fp32 and written in the compute precision (no fp32 temporary)
        out = torch.empty(self.weight_int8.shape, dtype=self.compute_dtype, device=self.weight_int8.device)
        return torch.mul(self.weight_int8, self.weight_scale, out=out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if not torch.is_autocast_enabled(x.device.type) and x.dtype != weight.dtype:
            weight, bias = weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight, {self.compute_dtype}"


def with_int8_weights(task: Task, compute_dtype: torch.dtype, shared_hooks: dict[str, object] | None = None) -> Task:
    """``task`` as a store with int8 weights keeps it, changed in place: each ``nn.Linear`` inside its blocks an
    ``Int8Linear`` (quantized from the tensors it holds, best fp32 as read from the file; those of one shape
    together), every other floating tensor inside its blocks in ``compute_dtype``, and every tensor its own memory
    (those read from a file are views of the one buffer it was read into, which a head's few KB would otherwise
    keep whole). ``shared_hooks``: hook tables the new modules take (a store's tasks share one empty, read-only
    table: ``templates.py``)."""
    blocks = getattr(task, "blocks", None)
    made = _quantize_linears(blocks, compute_dtype, shared_hooks or {}) if blocks is not None else set()
    block_modules = {id(module) for module in blocks.modules()} if blocks is not None else set()
    for module in task.modules():
        cast = id(module) in block_modules
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is None or id(tensor) in made:
                    continue
                floating = cast and tensor.is_floating_point()
                held = tensor.detach().to(compute_dtype if floating else tensor.dtype, copy=True)
                table[name] = nn.Parameter(held, requires_grad=False) if isinstance(tensor, nn.Parameter) else held
    return task


def _quantize_linears(blocks: nn.Module, compute_dtype: torch.dtype, shared_hooks: dict[str, object]) -> set[int]:
    """The blocks' ``nn.Linear`` layers replaced by ``Int8Linear``; the ids of the tensors they hold."""
    by_shape: dict[tuple[int, int], list[tuple[nn.Module, str, nn.Linear]]] = {}
    for module in blocks.modules():
        for name, child in module._modules.items():
            if type(child) is nn.Linear:
                by_shape.setdefault(tuple(child.weight.shape), []).append((module, name, child))
    made: set[int] = set()
    for entries in by_shape.values():
        values, scales = quantized(torch.stack([child.weight for _, _, child in entries]))
        for (module, name, child), value, scale in zip(entries, values, scales, strict=True):
            layer = Int8Linear.holding(value, scale, child.bias, compute_dtype)
            vars(layer).update(shared_hooks)
            module._modules[name] = layer
            made.update(id(t) for t in (*layer._parameters.values(), *layer._buffers.values()) if t is not None)
    return made
