"""DoRA (Liu et al., ICML 2024, "Weight-Decomposed Low-Rank Adaptation") on LoRA's sites.

A targeted frozen layer ``W₀`` becomes ``W' = m ⊙ (W₀ + s·BA) / ‖W₀ + s·BA‖``, the norm taken per output row
and ``m`` a learned magnitude per output starting at ``‖W₀‖`` (so a new task, with B = 0, is the pretrained
model). As PEFT computes it (``peft/tuners/lora/dora.py``, ``DoraLinearLayer.forward``), without forming W':
with ``g = m / ‖W₀ + s·BA‖`` (the norm detached from the graph, as the paper's §4.3 and PEFT do),
``y = out + (g − 1) ⊙ W₀x + g ⊙ s·BAx``, where ``out = W₀x + b`` is the frozen layer's output. The frozen
layer is read, not copied (tasks share it); ``merge`` writes ``W'`` into it. Options are LoRA's (rank, alpha,
targets, dropout on the low-rank path's input).

Parameters: ``blocks.{i}.{site}.lora_A.weight``, ``lora_B.weight`` and ``magnitude``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...errors import AdaptFormerError
from ..base import BackboneSpec
from ..layers import resolve_layers
from ..lora.config import LoRAConfig
from ..lora.task import LoRAUpdate
from ..sites import SiteTask


@dataclass(frozen=True)
class DoRAConfig(LoRAConfig):
    """LoRA with a learned magnitude per output (DoRA); trains A, B, magnitudes + head."""

    name: ClassVar[str] = "dora"
    label: ClassVar[str] = "DoRA"
    reference: ClassVar[str] = "Liu et al., ICML 2024 (arXiv 2402.09353); as PEFT's DoraLinearLayer"
    benchmark_default: ClassVar[bool] = False


class DoRAUpdate(LoRAUpdate):
    def __init__(self, frozen: nn.Linear, config: DoRAConfig):
        super().__init__(frozen.in_features, frozen.out_features, config)
        self.frozen = (frozen,)  # a reference, not a submodule: the backbone's layer is neither copied nor saved
        with torch.no_grad():  # m starts at ‖W₀‖ per row: with B = 0 the layer is the pretrained one
            self.magnitude = nn.Parameter(frozen.weight.detach().float().norm(dim=1))

    def direction_norm(self) -> torch.Tensor:
        """‖W₀ + s·BA‖ per output row, without gradient (the paper's §4.3)."""
        weight = self.frozen[0].weight
        with torch.no_grad():
            update = (self.lora_B.weight @ self.lora_A.weight) * self.scaling
            return (weight.float() + update.float()).norm(dim=1)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        gain = (self.magnitude / self.direction_norm()).to(out.dtype)
        bias = self.frozen[0].bias
        base = out - bias.to(out.dtype) if bias is not None else out  # W₀x
        low_rank = self.lora_B(self.lora_A(self.dropout(x))) * self.scaling
        return out + (gain - 1) * base + gain * low_rank.to(out.dtype)

    def fold(self, linear: nn.Linear) -> None:
        if linear is not self.frozen[0]:
            raise AdaptFormerError("dora: folded into a layer other than the one it was built on")
        update = (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        gain = self.magnitude / self.direction_norm()
        linear.weight.copy_((gain[:, None] * (linear.weight.float() + update.float())).to(linear.weight.dtype))


class DoRATask(SiteTask):
    config: DoRAConfig

    def __init__(self, config: DoRAConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        sites = backbone.sites_by_role(config.name, config.roles)
        blocks = {}
        for index in resolve_layers(config.layers, backbone.depth):
            updates = {}
            for name in sites[index]:
                layer = backbone.site_module(index, name)
                if not isinstance(layer, nn.Linear):
                    raise AdaptFormerError(f"method dora: block {index}'s {name} is not a Linear layer")
                updates[name] = DoRAUpdate(layer, config)
            blocks[str(index)] = nn.ModuleDict(updates)
        self.blocks = nn.ModuleDict(blocks)
