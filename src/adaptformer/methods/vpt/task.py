"""A VPT task (Jia et al. 2022), the paper's prompt-tuning baseline.

Deep: ``N`` learnable tokens are prepended before each selected block and dropped after it. Shallow: ``N`` tokens
are prepended before block 0 and dropped after the last block (they travel through every block, as in the VPT
paper). Tokens go in front of the class token, like the reference code; the prompts are ``embeddings.{i}``
((1, N, D) tensors, xavier-uniform initialised) so reference checkpoints load.
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import BackboneSpec, Task
from ..layers import resolve_layers
from .config import VPTConfig


class VPTTask(Task):
    config: VPTConfig

    def __init__(self, config: VPTConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        self.num_tokens = config.vpt_tokens
        if config.vpt_mode == "deep":
            layers = resolve_layers(config.layers, backbone.depth)
            self.prompt_at = {index: position for position, index in enumerate(layers)}
            self.drop_after = set(layers)
        else:
            self.prompt_at = {0: 0}
            self.drop_after = {backbone.depth - 1}
        self.embeddings = nn.ParameterList(
            [
                nn.Parameter(torch.empty(1, config.vpt_tokens, backbone.dim, device=backbone.device))
                for _ in range(len(self.prompt_at))
            ]
        )
        for prompt in self.embeddings:
            nn.init.xavier_uniform_(prompt)

    def before_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        position = self.prompt_at.get(index)
        if position is None:
            return x
        prompt = self.embeddings[position].to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([prompt, x], dim=1)

    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.num_tokens :] if index in self.drop_after else x

    def prompt_span(self, index: int, depth: int) -> tuple[torch.Tensor, int] | None:
        position = self.prompt_at.get(index)
        if position is None:
            return None
        return self.embeddings[position], index if self.config.vpt_mode == "deep" else depth - 1

    def parameter_groups(self) -> dict[str, int]:
        return {**super().parameter_groups(), "prompts": sum(p.numel() for p in self.embeddings)}
