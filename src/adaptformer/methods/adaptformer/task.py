"""An AdaptFormer task: one AdaptMLP per chosen block, wired beside (parallel) or after (sequential) the MLP.

Parallel: ``m + a(x')``, so y = x' + DropPath(MLP(LN2(x'))) + a(x') with DropPath not applied to a.
Sequential: ``m + a(m)``. The adapters live at ``blocks.{i}.adaptmlp`` inside the task, the reference names.
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import BackboneSpec, Task
from ..layers import resolve_layers
from .config import AdaptFormerConfig
from .layer import AdaptMLP


class AdaptFormerTask(Task):
    config: AdaptFormerConfig
    merge_refusal = "its AdaptMLP is a nonlinear bottleneck (ReLU) beside the MLP: it cannot fold into linear weights"

    def __init__(self, config: AdaptFormerConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        self.parallel = config.placement == "parallel"
        layers = resolve_layers(config.layers, backbone.depth)
        self.blocks = nn.ModuleDict({str(i): nn.ModuleDict({"adaptmlp": self._adapter(backbone, i)}) for i in layers})

    def _adapter(self, backbone: BackboneSpec, index: int) -> AdaptMLP:
        """x' -> m's width (parallel), or m -> m (sequential); equal wherever the adapter reads the residual."""
        out = backbone.branch_width(index)
        return AdaptMLP(backbone.width(index) if self.parallel else out, self.config, out_dim=out)

    def adapter(self, index: int) -> AdaptMLP | None:
        key = str(index)
        return self.blocks[key]["adaptmlp"] if key in self.blocks else None

    def wants_residual(self, index: int) -> bool:
        return self.parallel and str(index) in self.blocks

    def mlp_branch(self, index: int, m: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        key = str(index)
        if key not in self.blocks:
            return m
        return self.blocks[key]["adaptmlp"](residual if self.parallel else m, add_to=m)  # m + a

    def packed_branch(self, index: int):
        key = str(index)
        if key not in self.blocks:
            return None
        return self.blocks[key]["adaptmlp"].packed("residual" if self.parallel else "branch")
