"""Houlsby adapters (Houlsby et al., ICML 2019): ``a ← a + A₁(a)`` on the attention branch and ``m ← m + A₂(m)``
on the MLP branch of each chosen block, each ``A`` a bottleneck (``methods/bottleneck.py``: Down, GELU, Up,
Houlsby init). As the Adapter+ code's ``forward_houlsby`` (``adapter_plus/vit_adapter.py``), with one
difference: the attention adapter reads the attention's output projection (``proj``) before the block's layer
scale and DropPath (where a block has them), the only place a block exposes that branch.

Parameters: ``blocks.{i}.attention.*`` and ``blocks.{i}.mlp.*`` (``down``, ``up``: Linear weights and biases).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..adapter_options import NOT_MERGEABLE, BottleneckAdapterConfig
from ..base import BackboneSpec, Task
from ..bottleneck import Bottleneck
from ..layers import resolve_layers


@dataclass(frozen=True)
class HoulsbyConfig(BottleneckAdapterConfig):
    """Sequential bottleneck adapters after each block's attention and MLP (Houlsby); trains adapters + head."""

    name: ClassVar[str] = "houlsby"
    label: ClassVar[str] = "Houlsby adapter"
    reference: ClassVar[str] = "Houlsby et al., ICML 2019 (arXiv 1902.00751); as in github.com/visinf/adapter_plus"


class HoulsbyTask(Task):
    config: HoulsbyConfig
    merge_refusal: ClassVar[str] = NOT_MERGEABLE

    def __init__(self, config: HoulsbyConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        outputs = backbone.sites_by_role(config.name, {"attention output (proj)": ("attention_output",)})
        self.attention_site: dict[int, str] = {}
        blocks = {}
        for index in resolve_layers(config.layers, backbone.depth):
            adapters = {"mlp": self._adapter(backbone.branch_width(index))}
            if outputs[index]:
                site = list(outputs[index].values())[-1]  # the projection that ends the attention
                self.attention_site[index] = site.name
                adapters["attention"] = self._adapter(site.out_features)
            blocks[str(index)] = nn.ModuleDict(adapters)
        self.blocks = nn.ModuleDict(blocks)

    def _adapter(self, width: int) -> Bottleneck:
        c = self.config
        return Bottleneck(width, c.adapter_bottleneck, dropout=c.adapter_dropout, drop_path=c.adapter_drop_path)

    def modulates(self, index: int, site: str) -> bool:
        return self.attention_site.get(index) == site

    def site_output(self, index: int, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if not self.modulates(index, site):
            return out
        return out + self.blocks[str(index)]["attention"](out)

    def mlp_branch(self, index: int, m: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        key = str(index)
        return m + self.blocks[key]["mlp"](m) if key in self.blocks else m
