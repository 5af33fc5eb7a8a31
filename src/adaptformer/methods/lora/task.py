"""A LoRA task: ``out + (alpha / r) · B(A(dropout(x)))`` at each targeted linear layer of the chosen blocks.

The update sits on the frozen layer's output (the layer itself is never copied or merged), so tasks share the
backbone and a mixed batch runs each task's updates on its own rows. A starts kaiming-uniform (a = √5) and B at
zero, as PEFT initialises them, so a new task starts exactly at the pretrained model; with the same A and B the
outputs equal PEFT's LoRA on the same timm ViT (tested). Parameters: ``blocks.{i}.{site}.lora_A.weight`` /
``lora_B.weight``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..base import BackboneSpec
from ..layers import resolve_layers
from ..sites import SiteTask
from .config import LoRAConfig


class LoRAUpdate(nn.Module):
    def __init__(self, in_features: int, out_features: int, config: LoRAConfig):
        super().__init__()
        self.lora_A = nn.Linear(in_features, config.lora_rank, bias=False)
        self.lora_B = nn.Linear(config.lora_rank, out_features, bias=False)
        self.dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.scaling = config.scaling
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def fold(self, linear: nn.Linear) -> None:
        update = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
        linear.weight.add_(update.to(linear.weight.dtype))


class LoRATask(SiteTask):
    config: LoRAConfig

    def __init__(self, config: LoRAConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        sites = backbone.sites_by_role(config.name, config.roles)
        self.blocks = nn.ModuleDict(
            {
                str(index): nn.ModuleDict(
                    {
                        name: LoRAUpdate(site.in_features, site.out_features, config)
                        for name, site in sites[index].items()
                    }
                )
                for index in resolve_layers(config.layers, backbone.depth)
            }
        )
