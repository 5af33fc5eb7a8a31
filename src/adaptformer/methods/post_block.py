"""A bottleneck adapter on the output of the whole block, ``z ← z + A(z)`` with ``z = x' + m`` (Pfeiffer,
Adapter+): the Adapter+ code's ``forward_pfeiffer`` and ``forward_post`` (``adapter_plus/vit_adapter.py``).

The host gives a task the MLP branch m and the post-attention residual x' (``Task.mlp_branch``), so the adapter
runs there: returning ``m + A(x' + m)`` makes the block's output ``x' + m + A(x' + m)``. That holds where the
block's MLP branch is added to x' itself (a pre-norm block: ``adapter_input`` ``residual``); other blocks are
refused in one line.

Parameters: ``blocks.{i}.adapter.*`` (``down``, ``up``; ``norm`` for Pfeiffer, ``scale`` for Adapter+).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import AdaptFormerError
from .adapter_options import NOT_MERGEABLE, BottleneckAdapterConfig
from .base import BackboneSpec, Task
from .bottleneck import Bottleneck
from .layers import resolve_layers


class PostBlockAdapterTask(Task):
    config: BottleneckAdapterConfig
    merge_refusal: ClassVar[str] = NOT_MERGEABLE
    #: Pfeiffer: a trainable LayerNorm before Down, a fixed scale 1; Adapter+: no norm, a learned scale per channel
    adapter_norm: ClassVar[bool] = False
    channel_scale: ClassVar[bool] = False

    def __init__(self, config: BottleneckAdapterConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        blocks = {}
        for index in resolve_layers(config.layers, backbone.depth):
            width = backbone.branch_width(index)
            if backbone.adapter_input(index) != "residual" or backbone.width(index) != width:
                raise AdaptFormerError(
                    f"method {config.name}: block {index} does not add its MLP branch to the post-attention "
                    f"residual x' of the same width (adapter input {backbone.adapter_input(index)}), so the "
                    "block's output is not x' + m there; an adapter on the MLP branch (houlsby, adaptformer) fits"
                )
            adapter = Bottleneck(
                width,
                config.adapter_bottleneck,
                norm=self.adapter_norm,
                channel_scale=self.channel_scale,
                dropout=config.adapter_dropout,
                drop_path=config.adapter_drop_path,
            )
            blocks[str(index)] = nn.ModuleDict({"adapter": adapter})
        self.blocks = nn.ModuleDict(blocks)

    def wants_residual(self, index: int) -> bool:
        return str(index) in self.blocks

    def mlp_branch(self, index: int, m: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        key = str(index)
        if key not in self.blocks:
            return m
        return m + self.blocks[key]["adapter"](residual + m)
