"""A BitFit task: every bias of every block trains, as an offset the task owns.

BitFit (Ben Zaken et al., 2022) trains the bias terms of the pretrained model and nothing else. Training a bias b
of a frozen layer is adding a trained offset δ to its output (``W x + b + δ``), so each task keeps its δ (zero at
the start: the pretrained model exactly) and the backbone stays shared. Every operation of a block that has a bias
gets one: ``qkv``, ``proj``, ``fc1``, ``fc2`` and the two LayerNorms of timm's block, or whatever operations
discovery found in another model's blocks (``q``/``k``/``v``, a gated MLP's projections). Parameters:
``blocks.{i}.{site}.bias``.
The patch embedding's and the final norm's biases stay frozen (they are outside the blocks).
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import AdaptFormerError
from ..base import BackboneSpec
from ..sites import ALL_ROLES, SiteTask
from .config import BitFitConfig


class BiasOffset(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.bias

    def fold(self, module: nn.Module) -> None:
        module.bias.add_(self.bias.to(module.bias.dtype))


class BitFitTask(SiteTask):
    config: BitFitConfig

    def __init__(self, config: BitFitConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        sites = backbone.sites_by_role(config.name, {"biased operations": ALL_ROLES})
        with_bias = [{name: site for name, site in block.items() if site.bias} for block in sites]
        if not any(with_bias):
            raise AdaptFormerError(f"method {config.name}: the backbone's blocks' operations have no biases")
        self.blocks = nn.ModuleDict(
            {
                str(index): nn.ModuleDict({name: BiasOffset(site.out_features) for name, site in sites.items()})
                for index, sites in enumerate(with_bias)
            }
        )
