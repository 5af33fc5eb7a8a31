"""AdaptMLP: the bottleneck branch of AdaptFormer (arXiv 2205.13535), independent of any ViT.

    a = s * Up(Dropout(ReLU(Down(LN_in(x)))))   then LN_out(a) when layernorm == "out"

Sub-module names follow the reference implementation (``down_proj``, ``up_proj``,
``adapter_layer_norm_before``, ``scale``) so reference checkpoints load key for key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import AdaptFormerError
from ..base import PackedBranch
from ..norms import TaskLayerNorm
from .config import AdaptFormerConfig


class AdaptMLP(nn.Module):
    """Down-projection, ReLU, dropout, up-projection, scaling: a residual-free bottleneck branch."""

    def __init__(self, dim: int, config: AdaptFormerConfig | None = None, out_dim: int | None = None):
        super().__init__()
        self.config = config = config or AdaptFormerConfig()
        self.dim = dim
        self.out_dim = out_dim = out_dim or dim  # wider or narrower only beside an MLP that changes the width
        if config.layernorm == "out" and out_dim != dim:
            raise AdaptFormerError(f"layernorm out: the adapter maps {dim} to {out_dim} channels; use none or in")
        self.adapter_layer_norm_before = TaskLayerNorm(dim) if config.layernorm != "none" else None
        self.scale = nn.Parameter(torch.ones(1)) if config.learnable_scale else float(config.scale)
        self.down_proj = nn.Linear(dim, config.bottleneck)
        self.non_linear_func = nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)
        self.up_proj = nn.Linear(config.bottleneck, out_dim)
        self.norm_in = config.layernorm == "in"
        self.norm_out = config.layernorm == "out"
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Up is zero, so the adapted model starts exactly equal to the pretrained one."""
        if self.config.init == "lora":
            nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        else:
            nn.init.kaiming_normal_(self.down_proj.weight)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)
        if isinstance(self.scale, nn.Parameter):
            self.scale.fill_(1.0)
        if self.adapter_layer_norm_before is not None:
            self.adapter_layer_norm_before.reset_parameters()

    def forward(self, x: torch.Tensor, add_to: torch.Tensor | None = None) -> torch.Tensor:
        """The branch a, or ``add_to + a`` when given (the MLP branch it joins), computed in fewer passes."""
        if self.norm_in:
            x = self.adapter_layer_norm_before(x)
        hidden = self.dropout(self.non_linear_func(self.down_proj(x)))
        if self.norm_out:
            out = self.adapter_layer_norm_before(self.up_proj(hidden) * self.scale)
            return out if add_to is None else add_to + out
        # s * Up(h) = h @ (s W)^T + s b: scaling the (d x r) weight instead of the (tokens x d) output saves a pass
        weight, bias = self.up_proj.weight * self.scale, self.up_proj.bias * self.scale
        if add_to is None:
            return F.linear(hidden, weight, bias)
        # add_to + a as one matrix product accumulating into add_to: [h, 1] @ [sW | sb]^T, so neither the sum nor
        # the bias costs a separate pass over the (tokens x d) activations
        shape = add_to.shape
        ones = F.pad(hidden.reshape(-1, hidden.shape[-1]), (0, 1), value=1.0)
        weight = torch.cat([weight, bias[:, None]], dim=1).t().to(ones.dtype)
        flat = add_to.reshape(-1, shape[-1])
        if not torch.is_grad_enabled() and flat.is_contiguous() and flat.dtype == ones.dtype:
            # inference: accumulate into the branch's own fresh tensor (no graph keeps it), which spares the copy
            # of it an out-of-place product makes (1-2 % of a bf16 ViT-B forward)
            return flat.addmm_(ones, weight).view(shape)
        return torch.addmm(flat, ones, weight.to(add_to.dtype) if not torch.is_autocast_enabled() else weight).view(
            shape
        )

    def packed(self, source: str) -> PackedBranch | object:
        """This branch in the router's stackable layout (``methods/base.py``), reading ``source`` ("residual" or
        "branch"); ``UNPACKED`` for a LayerNorm after the scaling, which no pair of matrix products expresses."""
        if self.norm_out or (self.training and self.dropout.p > 0):
            return PackedBranch.UNPACKED
        down, down_bias, eps = self.down_proj.weight, self.down_proj.bias, None
        if self.norm_in:  # LN(x) = norm(x)·γ + β, so Down(LN(x)) = (W diag γ) norm(x) + (W β + b)
            norm = self.adapter_layer_norm_before
            eps = norm.eps
            if norm.weight is not None:
                down_bias = down_bias + down @ norm.bias if norm.bias is not None else down_bias
                down = down * norm.weight
        up = self.up_proj
        return PackedBranch(source, eps, down, down_bias, up.weight, up.bias, self.scale)

    def extra_repr(self) -> str:
        c = self.config
        widths = f"dim={self.dim}" + (f", out_dim={self.out_dim}" if self.out_dim != self.dim else "")
        return f"{widths}, bottleneck={c.bottleneck}, scale={c.scale}, layernorm={c.layernorm}"
