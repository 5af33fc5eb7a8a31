"""A LayerNorm that a task owns and that may be resident in half precision.

A task store keeps a task's block tensors in bf16/fp16 (``tasks.files.placed``) and runs under autocast; a
LayerNorm is not cast by CPU autocast, so an fp32 token stream would meet a bf16 weight ("mixed dtype"). This one
computes in its input's precision with its parameters cast to it (a few hundred values: nothing to save), so
it answers the same whichever precision holds it. Its state dict is nn.LayerNorm's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TaskLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) if self.weight is not None else None
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
