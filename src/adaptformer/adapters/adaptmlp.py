"""AdaptMLP: the bottleneck adapter of AdaptFormer (arXiv 2205.13535), independent of any ViT.

    a = s · Up(Dropout(ReLU(Down(LN_in(x)))))   then LN_out(a) when layernorm == "out"

Sub-module names follow the reference implementation (``down_proj``, ``up_proj``,
``adapter_layer_norm_before``, ``scale``) so reference checkpoints load key for key.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import AdaptFormerError

PLACEMENTS = ("parallel", "sequential")
LAYERNORM_OPTIONS = ("none", "in", "out")
INIT_OPTIONS = ("lora", "kaiming_normal")
LEARNABLE = "learnable"


@dataclass(frozen=True)
class AdapterConfig:
    """Every AdaptMLP option of DESIGN.md §1; invalid values raise :class:`AdaptFormerError`."""

    bottleneck: int = 64
    scale: float | str = 0.1  # a float, or "learnable" for a scalar parameter initialised to 1
    layernorm: str = "none"  # none | in (before Down) | out (after scaling)
    dropout: float = 0.1  # on the bottleneck activations; the reference uses 0.1 for images, 0 for video
    init: str = "lora"  # lora (reference code) | kaiming_normal (paper text)
    placement: str = "parallel"  # parallel (input x', the paper's numbers) | sequential (after the MLP)

    def __post_init__(self) -> None:
        if not isinstance(self.bottleneck, int) or isinstance(self.bottleneck, bool) or self.bottleneck < 1:
            raise AdaptFormerError(f"bottleneck: expected a positive integer, got {self.bottleneck!r}")
        if isinstance(self.scale, str):
            if self.scale != LEARNABLE:
                raise AdaptFormerError(f"scale: expected a number or '{LEARNABLE}', got {self.scale!r}")
        elif isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise AdaptFormerError(f"scale: expected a finite number or '{LEARNABLE}', got {self.scale!r}")
        else:
            object.__setattr__(self, "scale", float(self.scale))
        _check_choice("layernorm", self.layernorm, LAYERNORM_OPTIONS)
        _check_choice("init", self.init, INIT_OPTIONS)
        _check_choice("placement", self.placement, PLACEMENTS)
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not (0.0 <= self.dropout < 1.0)
        ):
            raise AdaptFormerError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")

    @property
    def learnable_scale(self) -> bool:
        return self.scale == LEARNABLE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise AdaptFormerError(f"{option}: expected one of {', '.join(choices)}, got {value!r}")


def parse_scale(text: str) -> float | str:
    """Parse a command-line scale: a number or 'learnable'."""
    if text == LEARNABLE:
        return LEARNABLE
    try:
        return float(text)
    except ValueError:
        raise AdaptFormerError(f"--scale: expected a number or '{LEARNABLE}', got {text!r}") from None


class AdaptMLP(nn.Module):
    """Down-projection, ReLU, dropout, up-projection, scaling: a residual-free bottleneck branch."""

    def __init__(self, dim: int, config: AdapterConfig | None = None):
        super().__init__()
        self.config = config = config or AdapterConfig()
        self.dim = dim
        self.adapter_layer_norm_before = nn.LayerNorm(dim) if config.layernorm != "none" else None
        if config.learnable_scale:
            self.scale = nn.Parameter(torch.ones(1))
        else:
            self.scale = float(config.scale)
        self.down_proj = nn.Linear(dim, config.bottleneck)
        self.non_linear_func = nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)
        self.up_proj = nn.Linear(config.bottleneck, dim)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.layernorm == "in":
            x = self.adapter_layer_norm_before(x)
        hidden = self.dropout(self.non_linear_func(self.down_proj(x)))
        out = self.up_proj(hidden) * self.scale
        if self.config.layernorm == "out":
            out = self.adapter_layer_norm_before(out)
        return out

    def extra_repr(self) -> str:
        c = self.config
        return f"dim={self.dim}, bottleneck={c.bottleneck}, scale={c.scale}, layernorm={c.layernorm}"
