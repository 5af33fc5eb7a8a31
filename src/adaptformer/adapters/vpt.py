"""Visual Prompt Tuning (Jia et al. 2022) on timm ViT blocks, as the paper's baseline.

Deep: ``N`` learnable tokens are prepended before each selected block and dropped after it.
Shallow: ``N`` tokens are prepended before block 0 and dropped after the last block (they travel through
every block, as in the VPT paper). Tokens are prepended in front of the class token, like the reference code,
and the prompts live in ``model.embeddings`` (a ParameterList of (1, N, D) tensors, xavier-uniform
initialised) so reference checkpoints' ``embeddings.{i}`` keys load.
"""

from __future__ import annotations

import torch
from torch import nn

PROMPTS_ATTR = "embeddings"
VPT_MODES = ("deep", "shallow")


class _PrependPrompt:
    """Forward pre-hook on a block: x -> cat(prompt, x) along the token axis."""

    def __init__(self, prompts: nn.ParameterList, index: int):
        self.prompts = prompts
        self.index = index

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]
        prompt = self.prompts[self.index].to(x.dtype).expand(x.shape[0], -1, -1)
        return (torch.cat([prompt, x], dim=1), *args[1:])


class _DropPrompt:
    """Forward hook on a block: drop the first ``num_tokens`` tokens of its output."""

    def __init__(self, num_tokens: int):
        self.num_tokens = num_tokens

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output[:, self.num_tokens :]


def add_prompts(model: nn.Module, num_tokens: int, mode: str, layers: list[int]) -> nn.ParameterList:
    """Create ``model.embeddings`` and hook it into ``model.blocks``; returns the prompt list."""
    dim = model.embed_dim
    blocks = list(model.blocks)
    count = len(layers) if mode == "deep" else 1
    reference = next(model.blocks.parameters())
    prompts = nn.ParameterList(
        [
            nn.Parameter(torch.empty(1, num_tokens, dim, device=reference.device, dtype=reference.dtype))
            for _ in range(count)
        ]
    )
    for prompt in prompts:
        nn.init.xavier_uniform_(prompt)
    model.add_module(PROMPTS_ATTR, prompts)
    if mode == "deep":
        for position, index in enumerate(layers):
            blocks[index].register_forward_pre_hook(_PrependPrompt(prompts, position))
            blocks[index].register_forward_hook(_DropPrompt(num_tokens))
    else:
        blocks[0].register_forward_pre_hook(_PrependPrompt(prompts, 0))
        blocks[-1].register_forward_hook(_DropPrompt(num_tokens))
    return prompts
