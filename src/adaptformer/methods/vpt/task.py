"""A VPT task (Jia et al. 2022), the paper's prompt-tuning baseline, in three modes.

* ``deep``: ``N`` learnable tokens are prepended before each selected block and dropped after it.
* ``shallow``: ``N`` tokens are prepended before block 0 and dropped after the last block (they travel through
  every block, as in the VPT paper).
* ``kv`` (prefix tuning): each selected block's attention gets ``N`` learned keys and ``N`` learned values,
  ``softmax(q [P_k; K]^T / sqrt(d)) [P_v; V]``; the prompts are never queries and never pass through the
  block's norm or projections. The host makes room for them as in deep mode (``N`` placeholder slots before
  the block, dropped after it) and writes the learned keys and values over the slots' own at ``attn.qkv``.

Deep/shallow tokens go in front of the class token, like the reference code, and are ``embeddings.{i}``
((1, N, D) tensors, xavier-uniform initialised) so reference checkpoints load. kv prompts are
``key_prompts.{i}`` and ``value_prompts.{i}`` ((1, N, A), A the attention's key width, the same init): 2·N·A
parameters per block against deep's N·D.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import AdaptFormerError
from ..base import BackboneSpec, Task
from ..layers import resolve_layers
from .config import VPTConfig


def _prompts(count: int, tokens: int, width: int, device: torch.device) -> nn.ParameterList:
    prompts = nn.ParameterList([nn.Parameter(torch.empty(1, tokens, width, device=device)) for _ in range(count)])
    for prompt in prompts:
        nn.init.xavier_uniform_(prompt)
    return prompts


def _alternatives(backbone: BackboneSpec) -> str:
    """The methods this backbone can host instead (LoRA and SSF need a hookable qkv in every block)."""
    blocks = backbone.sites or ({},)
    qkv = all(any(site.role == "attention_input" for site in block.values()) for block in blocks)
    bias = any(site.bias for block in blocks for site in block.values())
    methods = ["adaptformer", *(["lora"] if qkv else []), *(["bitfit"] if bias else []), *(["ssf"] if qkv else [])]
    return ", ".join(methods[:-1]) + f" or {methods[-1]}" if len(methods) > 1 else methods[0] + " or linear"


class VPTTask(Task):
    config: VPTConfig
    merge_refusal = "its prompts are extra tokens (or keys and values) in the sequence, not a change of any weight"

    def __init__(self, config: VPTConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        if backbone.no_prompts:
            raise AdaptFormerError(f"method vpt: {backbone.no_prompts}; use {_alternatives(backbone)}")
        self.num_tokens = config.vpt_tokens
        if config.vpt_mode == "shallow":
            self.prompt_at = {0: 0}
            self.drop_after = {backbone.depth - 1}
        else:
            layers = resolve_layers(config.layers, backbone.depth)
            self.prompt_at = {index: position for position, index in enumerate(layers)}
            self.drop_after = set(layers)
        count = len(self.prompt_at)
        if config.vpt_mode == "kv":
            if backbone.key_value_dim is None:
                raise AdaptFormerError(
                    "vpt_mode kv: needs timm attention blocks (a fused attn.qkv projection); use deep or shallow "
                    "for this backbone"
                )
            self.key_prompts = _prompts(count, config.vpt_tokens, backbone.key_value_dim, backbone.device)
            self.value_prompts = _prompts(count, config.vpt_tokens, backbone.key_value_dim, backbone.device)
            # the slots the prefix occupies; their own content never reaches a kept output
            self.register_buffer("placeholder", torch.zeros(1, config.vpt_tokens, backbone.dim), persistent=False)
        else:
            self.embeddings = _prompts(count, config.vpt_tokens, backbone.dim, backbone.device)

    def _tokens(self, position: int) -> torch.Tensor:
        return self.placeholder if self.config.vpt_mode == "kv" else self.embeddings[position]

    def before_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        position = self.prompt_at.get(index)
        if position is None:
            return x
        prompt = self._tokens(position).to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([prompt, x], dim=1)

    def keeps_prompts_between_blocks(self) -> bool:
        return self.config.vpt_mode == "shallow"

    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.num_tokens :] if index in self.drop_after else x

    def prompt_span(self, index: int, depth: int) -> tuple[torch.Tensor, int] | None:
        position = self.prompt_at.get(index)
        if position is None:
            return None
        return self._tokens(position), depth - 1 if self.config.vpt_mode == "shallow" else index

    def key_value_prefix(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        position = self.prompt_at.get(index) if self.config.vpt_mode == "kv" else None
        if position is None:
            return None
        return self.key_prompts[position], self.value_prompts[position]

    def parameter_groups(self) -> dict[str, int]:
        groups = super().parameter_groups()
        groups["prompts"] = groups.pop("adapters")  # everything a VPT task has beyond its head is prompts
        return groups
