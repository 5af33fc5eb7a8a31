"""Convpass (Jie & Deng, 2022, "Convolutional Bypasses Are Better Vision Transformer Adapters").

Beside the attention and beside the MLP of each block, a bypass reads the same normalised tokens as they do and
adds ``s · C(h)`` to the branch: ``x' = x + Attn(LN₁x) + s·C₁(LN₁x)``, ``y = x' + MLP(LN₂x') + s·C₂(LN₂x')``. ``C`` is
Down (d→r, Xavier, zero bias), QuickGELU, a 3×3 convolution over the patch grid (the class and other prefix
tokens each as a 1×1 image), QuickGELU, dropout, Up (r→d, zeros): the official ``convpass/vtab/convpass.py``
(class ``Convpass``, ``forward_block``; github.com/JieShibo/PETL-ViT), whose convolution starts as the identity
on its centre tap. Up starts at zero, so a new task is the pretrained model.

The host calls a task at a block's operations, not around its branches, so the bypass reads the norm's output
where the norm runs (``site_output`` of ``norm1`` / ``norm2``, passed through unchanged) and adds its result to
the attention's output projection (``proj``) and to the MLP branch (``mlp_branch``). Tokens in (B, N, C) are
laid out as prefix tokens then the patch grid (the backbone's grid, or the square that N minus its prefix tokens
makes); (B, H, W, C) tokens are the grid. Not linear, so it does not merge.

Parameters: ``blocks.{i}.attention.*`` and ``blocks.{i}.mlp.*`` (``down``, ``conv``, ``up``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...errors import AdaptFormerError
from ...utils.options import check_int, check_number, option
from ..base import BackboneSpec, MethodConfig, Task
from ..layers import LayerSpec, normalize_layer_spec, resolve_layers


@dataclass(frozen=True)
class ConvpassConfig(MethodConfig):
    """Convolutional bypasses beside each block's attention and MLP (Convpass); trains them + head."""

    name: ClassVar[str] = "convpass"
    label: ClassVar[str] = "Convpass"
    reference: ClassVar[str] = "Jie & Deng, 2022 (arXiv 2207.07039); github.com/JieShibo/PETL-ViT (convpass)"
    tune_axes: ClassVar[tuple] = (("convpass_scale", (0.01, 0.1, 1.0, 10.0)),)
    #: SGD at 0.4 collapsed to chance on digits in every seed (docs/results)
    learning_rates: ClassVar[tuple[float, ...]] = (0.03, 0.1, 0.25)

    convpass_bottleneck: int = option(8, "channels r of the bypass's convolution (official 8)")
    convpass_scale: float = option(1.0, "s on each bypass (the official code searches 0.01-100 per task)")
    convpass_dropout: float = option(0.1, "dropout before Up (official 0.1)")
    layers: LayerSpec = option("all", "blocks that get an adapter or prompt: all, top:K, bottom:K or 0,3,5")

    def validate(self) -> None:
        super().validate()
        check_int("convpass_bottleneck", self.convpass_bottleneck, 1)
        check_number("convpass_scale", self.convpass_scale)
        object.__setattr__(self, "convpass_scale", float(self.convpass_scale))
        check_number("convpass_dropout", self.convpass_dropout, 0.0, 0.999999)
        object.__setattr__(self, "layers", normalize_layer_spec(self.layers))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class ConvBypass(nn.Module):
    def __init__(self, width: int, config: ConvpassConfig, prefix: int | None, grid: tuple[int, ...] | None):
        super().__init__()
        rank = config.convpass_bottleneck
        self.prefix, self.grid = prefix, grid
        self.down = nn.Linear(width, rank)
        self.conv = nn.Conv2d(rank, rank, 3, padding=1)
        self.dropout = nn.Dropout(config.convpass_dropout) if config.convpass_dropout > 0 else nn.Identity()
        self.up = nn.Linear(rank, width)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        with torch.no_grad():  # the official start: the identity on the centre tap
            self.conv.weight.zero_()
            self.conv.weight[:, :, 1, 1] += torch.eye(rank)
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        down = quick_gelu(self.down(h))
        if down.ndim == 4:  # (B, H, W, r): the grid itself
            mixed = self._convolved(down)
        else:
            prefix, (height, width) = self._layout(down.shape[1])
            grid = down[:, prefix:].unflatten(1, (-1, height, width)).flatten(0, 1)  # (B·frames, H, W, r)
            patches = self._convolved(grid).reshape(down.shape[0], -1, down.shape[-1])
            front = down[:, :prefix].reshape(-1, 1, 1, down.shape[-1])  # each prefix token a 1x1 image
            front = self._convolved(front).reshape(down.shape[0], prefix, -1)
            mixed = torch.cat([front, patches], dim=1)
        return self.up(self.dropout(quick_gelu(mixed)))

    def _convolved(self, grid: torch.Tensor) -> torch.Tensor:
        """A 3x3 convolution over (..., H, W, r) channels-last maps."""
        return self.conv(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def _layout(self, tokens: int) -> tuple[int, tuple[int, int]]:
        """(prefix tokens, (H, W)): the backbone's grid where the tokens hold it after some prefix (frames of a
        video grid folded into the batch), else the square that the tokens past the backbone's prefix make (a
        backbone that declares no prefix: the fewest leading tokens, up to 16, that leave a square)."""
        if self.grid is not None:
            cells = math.prod(self.grid)
            if tokens >= cells and (self.prefix is None or tokens - cells >= self.prefix):
                return tokens - cells, (self.grid[-2], self.grid[-1])
        for prefix in [self.prefix] if self.prefix is not None else range(min(tokens, 17)):
            side = math.isqrt(tokens - prefix)
            if side > 0 and side * side == tokens - prefix:
                return prefix, (side, side)
        raise AdaptFormerError(f"convpass: {tokens} tokens do not form the backbone's patch grid {self.grid}")


class ConvpassTask(Task):
    config: ConvpassConfig
    merge_refusal: ClassVar[str] = "its bypasses are nonlinear (QuickGELU, convolutions): they cannot fold into weights"

    def __init__(self, config: ConvpassConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        norms = backbone.sites_by_role(config.name, {"norms before attention and MLP": ("norm",)})
        outputs = backbone.sites_by_role(config.name, {"attention output (proj)": ("attention_output",)})
        self.points: dict[int, tuple[str, str, str]] = {}  # block -> (norm before attention, proj, norm before MLP)
        blocks = {}
        for index in resolve_layers(config.layers, backbone.depth):
            names = list(norms[index])
            if len(names) < 2 or not outputs[index] or backbone.adapter_input(index) != "residual":
                raise AdaptFormerError(
                    f"method convpass: block {index} is not a pre-norm block with a norm before its attention and "
                    "before its MLP and an attention output projection (where the bypasses read and write)"
                )
            self.points[index] = (names[0], list(outputs[index])[-1], names[1])
            width, branch = norms[index][names[0]].out_features, backbone.branch_width(index)
            make = lambda w: ConvBypass(w, config, backbone.prefix_tokens, backbone.grid)  # noqa: E731
            blocks[str(index)] = nn.ModuleDict({"attention": make(width), "mlp": make(branch)})
        self.blocks = nn.ModuleDict(blocks)
        self._read: dict[tuple[int, str], torch.Tensor] = {}  # a norm's output, until its branch is added to

    def modulates(self, index: int, site: str) -> bool:
        return index in self.points and site in self.points[index]

    def site_output(self, index: int, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        before_attention, projection, before_mlp = self.points.get(index, ("", "", ""))
        if site in (before_attention, before_mlp):
            self._read[index, site] = out
            return out
        if site == projection:
            bypass = self.blocks[str(index)]["attention"](self._read.pop((index, before_attention)))
            if bypass.shape != out.shape:
                raise AdaptFormerError(
                    f"convpass: block {index}'s attention answers in another layout ({tuple(out.shape)}) than it "
                    f"reads ({tuple(bypass.shape)}), e.g. in windows: the bypass cannot be added to it"
                )
            return out + self.config.convpass_scale * bypass.to(out.dtype)
        return out

    def mlp_branch(self, index: int, m: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        if index not in self.points:
            return m
        normed = self._read.pop((index, self.points[index][2]))
        return m + self.config.convpass_scale * self.blocks[str(index)]["mlp"](normed).to(m.dtype)
