"""LayerNorm tuning (as in Zhao et al., ICLR 2024, "Tuning LayerNorm in Attention"; a baseline of the V-PETL and
"Lessons learned" benchmarks): the scale γ and shift β of every norm in the blocks train, nothing else.

The frozen norm stays shared: a task holds ``Δγ`` and ``Δβ`` and changes the norm's output to
``γ x̂ + β + Δγ ⊙ x̂ + Δβ = (γ + Δγ) x̂ + (β + Δβ)``, where ``x̂`` is the normalised input (LayerNorm: centred
and scaled by the standard deviation; RMSNorm: scaled by the root mean square, with the norm's own ε). Both
start at zero, so a new task is the pretrained model exactly, and the gradients are those of γ and β
themselves; ``merge`` adds them to the norm's weights. The final norm (outside the blocks) is the head's:
a mean-pooled model's ``fc_norm`` trains with every method; a class-token model's last ``norm`` stays frozen.

Parameters: ``blocks.{i}.{norm}.weight_delta`` / ``bias_delta`` (``norm1``, ``norm2``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...backbones.anatomy import Site
from ...errors import AdaptFormerError
from ..base import BackboneSpec, MethodConfig
from ..sites import SiteTask


@dataclass(frozen=True)
class LNTuneConfig(MethodConfig):
    """The affine parameters of the blocks' LayerNorms (LayerNorm tuning); trains them + head."""

    name: ClassVar[str] = "lntune"
    label: ClassVar[str] = "LayerNorm tuning"
    reference: ClassVar[str] = "Zhao et al., ICLR 2024 (arXiv 2312.11420); a V-PETL Bench baseline"


class NormAffineDelta(nn.Module):
    def __init__(self, site: Site):
        super().__init__()
        self.width, self.kind, self.eps = site.out_features, site.norm or "layer", site.eps or 1e-6
        self.weight_delta = nn.Parameter(torch.zeros(self.width))
        self.bias_delta = nn.Parameter(torch.zeros(self.width)) if site.bias else None

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rms":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return F.layer_norm(x, (self.width,), eps=self.eps)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        change = self.normalised(x) * self.weight_delta
        if self.bias_delta is not None:
            change = change + self.bias_delta
        return out + change.to(out.dtype)

    def fold(self, norm: nn.Module) -> None:
        weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
        if not isinstance(weight, torch.Tensor) or (self.bias_delta is not None and not isinstance(bias, torch.Tensor)):
            raise AdaptFormerError(f"lntune: the norm {type(norm).__name__} has no affine weight to fold into")
        weight.add_(self.weight_delta.to(weight.dtype))
        if self.bias_delta is not None:
            bias.add_(self.bias_delta.to(bias.dtype))


class LNTuneTask(SiteTask):
    config: LNTuneConfig

    def __init__(self, config: LNTuneConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        sites = backbone.sites_by_role(config.name, {"norms": ("norm",)})
        self.blocks = nn.ModuleDict(
            {
                str(index): nn.ModuleDict({name: NormAffineDelta(site) for name, site in sites[index].items()})
                for index in range(backbone.depth)
                if sites[index]
            }
        )
