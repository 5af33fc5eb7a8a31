"""The bottleneck adapter the sequential adapters share (Houlsby, Pfeiffer, Adapter+).

``a(h) = s ⊙ DropPath(Up(Dropout(GELU(Down(norm(h))))))``: ``norm`` a trainable LayerNorm (Pfeiffer) or none,
``s`` a number, or a learned scale per channel (Adapter+). Down and Up start as Houlsby et al. start them
(truncated normal, std 0.01, cut at ±2σ; biases zero), so a new adapter is near the identity of its block.
The equations and the initialisation follow ``adapter_plus/vit_adapter.py`` (class ``Adapter``) of the
Adapter+ code (github.com/visinf/adapter_plus), which implements all three configurations.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from .norms import TaskLayerNorm

HOULSBY_STD = 0.01


class Bottleneck(nn.Module):
    def __init__(
        self,
        width: int,
        bottleneck: int,
        *,
        norm: bool = False,
        channel_scale: bool = False,
        scale: float = 1.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm = TaskLayerNorm(width) if norm else None
        self.down = nn.Linear(width, bottleneck)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Linear(bottleneck, width)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.scale = nn.Parameter(torch.ones(width)) if channel_scale else None
        self.fixed_scale = scale
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=HOULSBY_STD, a=-2 * HOULSBY_STD, b=2 * HOULSBY_STD)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            h = self.norm(h)
        out = self.drop_path(self.up(self.dropout(self.act(self.down(h)))))
        return out * self.scale if self.scale is not None else out * self.fixed_scale
