"""An SSF task: ``y = γ ⊙ out + β`` per channel after each operation of every block.

SSF (Lian et al., NeurIPS 2022, "Scaling & Shifting Your Features") follows each operation of the frozen model
with a learned per-channel scale γ and shift β. Here they follow every operation discovery finds in each block:
timm's ``norm1``, ``qkv``, ``proj``, ``norm2``, ``fc1`` and ``fc2`` (another model's ``q``/``k``/``v``, a gated
MLP's projections); the patch embedding and the final norm (outside the blocks) are left as they are.
γ and β start as the SSF code starts them (N(1, 0.02), N(0, 0.02)), or at 1 and 0 (``ssf_init: identity``: the
pretrained model exactly). After training they can be folded into the preceding layer's weights; they are kept
apart here so tasks share one backbone. Parameters: ``blocks.{i}.{site}.ssf_scale`` / ``ssf_shift``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import AdaptFormerError
from ..base import BackboneSpec
from ..sites import ALL_ROLES, SiteTask
from .config import SSFConfig


class ScaleShift(nn.Module):
    def __init__(self, width: int, init: str):
        super().__init__()
        self.ssf_scale = nn.Parameter(torch.ones(width))
        self.ssf_shift = nn.Parameter(torch.zeros(width))
        if init == "normal":
            nn.init.normal_(self.ssf_scale, mean=1.0, std=0.02)
            nn.init.normal_(self.ssf_shift, std=0.02)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out * self.ssf_scale + self.ssf_shift

    def fold(self, module: nn.Module) -> None:
        """``γ ⊙ (W x + b) + β``: the weight's rows (a norm's scale) times γ, the bias γ ⊙ b + β."""
        weight, bias = module.weight, getattr(module, "bias", None)
        scale, shift = self.ssf_scale.float(), self.ssf_shift.float()
        if not isinstance(bias, torch.Tensor):  # adding one would change the architecture the weights load into
            raise AdaptFormerError(f"ssf: a {type(module).__name__} without a bias cannot take the shift")
        factor = scale[:, None] if weight.ndim == 2 else scale
        weight.copy_((weight.float() * factor).to(weight.dtype))
        bias.copy_((bias.float() * scale + shift).to(bias.dtype))


class SSFTask(SiteTask):
    config: SSFConfig

    def __init__(self, config: SSFConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        sites = backbone.sites_by_role(config.name, {"operations": ALL_ROLES})
        self.blocks = nn.ModuleDict(
            {
                str(index): nn.ModuleDict(
                    {name: ScaleShift(site.out_features, config.ssf_init) for name, site in sites[index].items()}
                )
                for index in range(backbone.depth)
            }
        )
