"""Attach AdaptMLP branches to the blocks of a real timm ViT, without copying or re-implementing the block.

timm's pre-norm ``Block`` computes ``x' = x + attn-branch`` then ``y = x' + drop_path2(ls2(mlp(norm2(x'))))``.
The adapter needs exactly two taps into that forward:

* x', the post-attention residual, which is the input of ``norm2`` (a forward pre-hook captures it);
* m, the MLP branch after DropPath, which is the output of ``drop_path2`` (a forward hook rewrites it).

Parallel: ``m + a(x')`` (so y = x' + DropPath(MLP(LN2(x'))) + a, DropPath not applied to a).
Sequential: ``m + a(m)``.  The AdaptMLP is registered as ``block.adaptmlp`` so parameter names are the
reference's ``blocks.{i}.adaptmlp.*``.  The hooks are small callable objects that hold the adapter, so a
``copy.deepcopy`` of the model re-binds them to the copied adapter.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from ..errors import AdaptFormerError
from .adaptmlp import AdapterConfig, AdaptMLP

ADAPTER_ATTR = "adaptmlp"


class _CaptureResidual:
    """Pre-hook on ``norm2``: remember x' for the parallel adapter, per thread (a served model may be shared)."""

    def __init__(self, adapter: AdaptMLP):
        self.adapter = adapter
        self.stash: dict[int, torch.Tensor] = {}

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.stash[threading.get_ident()] = args[0]

    def pop(self) -> torch.Tensor:
        try:
            return self.stash.pop(threading.get_ident())
        except KeyError:
            raise RuntimeError("AdaptFormer: the block's norm2 did not run before its MLP branch") from None


class _AddParallel:
    """Forward hook on ``drop_path2``: m -> m + a(x')."""

    def __init__(self, adapter: AdaptMLP, capture: _CaptureResidual):
        self.adapter = adapter
        self.capture = capture

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self.adapter(self.capture.pop())


class _AddSequential:
    """Forward hook on ``drop_path2``: m -> m + a(m)."""

    def __init__(self, adapter: AdaptMLP):
        self.adapter = adapter

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self.adapter(output)


def check_prenorm_block(block: nn.Module, index: int) -> None:
    """Only pre-norm blocks (norm2 -> mlp -> drop_path2 on the residual) have the x' the adapter needs."""
    missing = [name for name in ("norm2", "mlp", "drop_path2") if not isinstance(getattr(block, name, None), nn.Module)]
    name = type(block).__name__
    if missing or name in {"ResPostBlock", "ParallelScalingBlock", "ParallelThingsBlock"}:
        raise AdaptFormerError(
            f"block {index} ({name}) is not a pre-norm timm ViT block with norm2/mlp/drop_path2; "
            "AdaptFormer supports timm's Block (ViT, DeiT, DeiT-III, MAE, augreg, in21k families)"
        )


def add_adapter(block: nn.Module, dim: int, config: AdapterConfig, index: int = 0) -> AdaptMLP:
    """Register ``block.adaptmlp`` and the hooks that wire it into the block's forward."""
    check_prenorm_block(block, index)
    if hasattr(block, ADAPTER_ATTR):
        raise AdaptFormerError(f"block {index} already has an adapter; adapt a fresh backbone")
    reference = next(block.parameters())  # new weights live where (and in the dtype) the block lives
    adapter = AdaptMLP(dim, config).to(device=reference.device, dtype=reference.dtype)
    block.add_module(ADAPTER_ATTR, adapter)
    if config.placement == "parallel":
        capture = _CaptureResidual(adapter)
        block.norm2.register_forward_pre_hook(capture)
        block.drop_path2.register_forward_hook(_AddParallel(adapter, capture))
    else:
        block.drop_path2.register_forward_hook(_AddSequential(adapter))
    return adapter


def block_dim(block: nn.Module) -> int:
    """Width of the residual stream of a timm block, read from its norm2."""
    shape = getattr(block.norm2, "normalized_shape", None)
    if shape:
        return int(shape[0])
    weight = getattr(block.norm2, "weight", None)
    if weight is None:
        raise AdaptFormerError(f"cannot infer the width of {type(block).__name__}: norm2 has no shape")
    return int(weight.shape[0])
