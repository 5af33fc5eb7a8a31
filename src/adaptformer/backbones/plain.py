"""Any ``nn.Module`` as a backbone, where it has neither timm's interface nor Hugging Face's: a research model of
your own, a vision tower taken out of a larger model.

``ModuleBackbone`` uses the module as a feature extractor: its ``forward`` output (the first tensor of it) is the
tokens, pooled by their mean ((B, N, C): over the tokens; (B, C, H, W) or (B, C, T, H, W): over the positions;
(B, C): as they are). Its blocks and their MLPs are found by discovery like any model's (``discovery.py``); its
input size is the first the probe runs at (224 px first). A module whose forward ends in a classifier gives its
logits as features: pass the part of it that ends at its tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import AdaptFormerError
from .anatomy import first_tensor
from .hf import wrap_if_hf

#: what timm's models have and the adapted model calls
TIMM_INTERFACE = ("forward_features", "reset_classifier")


class ModuleBackbone(nn.Module):
    """A plain module seen through the interface the adapted model uses (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.kind = type(model).__name__
        self.pretrained_cfg: dict = {}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = first_tensor(self.model(x))
        if tokens is None:
            raise AdaptFormerError(f"{self.kind}: its forward returned no tensor")
        return tokens

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        if x.ndim == 3:
            return x.mean(dim=1)
        return x.flatten(2).mean(dim=2) if x.ndim > 3 else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.pool(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if num_classes:
            raise AdaptFormerError(f"{self.kind}: used as a feature extractor; tasks bring their heads")


def has_timm_interface(model: nn.Module) -> bool:
    return all(callable(getattr(model, name, None)) for name in TIMM_INTERFACE) and (
        callable(getattr(model, "forward_head", None)) or callable(getattr(model, "pool", None))
    )


def as_backbone(model: nn.Module) -> nn.Module:
    """``model`` as the adapted model takes it: a Hugging Face model wrapped (``hf.py``), a model with timm's
    interface as it is, any other module as a feature extractor (``ModuleBackbone``)."""
    model = wrap_if_hf(model)
    return model if has_timm_interface(model) else ModuleBackbone(model)
