"""Which transformer families can be adapted, how their tokens are pooled, and what each cannot host.

Every family here is one sequence of pre-norm blocks of one width (timm's ``blocks``), the shape AdaptFormer
needs: an AdaptMLP beside each block's MLP. They differ in their attention (which decides whether prompt tokens
can be inserted) and in their pooling. Hierarchical models (Swin, MViTv2, Hiera: stages of growing width,
windowed or pooled attention) and models without such a block list are refused in one line naming the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import AdaptFormerError

RELATIVE_BIAS = (
    "its attention adds a relative position bias indexed by the patch grid (and class token), which has no "
    "entry for prompt tokens"
)


@dataclass(frozen=True)
class Family:
    name: str
    #: why prompts (VPT deep / shallow / kv) cannot be inserted, or None where they can
    no_prompts: str | None = None
    #: pool with the backbone's own ``forward_head(tokens, pre_logits=True)`` (its head and fc_norm are reset to
    #: identities by the adapted model), where it has no ``pool`` of timm's VisionTransformer
    pools_in_head: bool = False

    def pool(self, backbone: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        if self.pools_in_head:
            return backbone.forward_head(tokens, pre_logits=True)
        return backbone.pool(tokens)


#: class name -> family (timm's; Hugging Face models are wrapped to look like timm's VisionTransformer)
FAMILIES: dict[str, Family] = {
    "VisionTransformer": Family("timm ViT"),
    "Eva": Family("timm Eva (EVA-02, RoPE ViT)"),  # rotary: prompts counted as prefix tokens (model.py)
    "VisionTransformerDistilled": Family("timm DeiT distilled", pools_in_head=True),  # mean of cls and dist
    "Beit": Family("timm BEiT", no_prompts=RELATIVE_BIAS, pools_in_head=True),
    "VisionTransformerRelPos": Family("timm ViT relpos", no_prompts=RELATIVE_BIAS, pools_in_head=True),
    "VideoViT": Family("video ViT (VideoMAE)"),
    "HFBackbone": Family("Hugging Face"),
}
#: a class of none of these that has timm VisionTransformer's interface (a user's own subclass-alike)
DUCK_TYPED = Family("VisionTransformer-like")
HIERARCHICAL = ("SwinTransformer", "SwinTransformerV2", "MultiScaleVit", "Hiera", "PyramidVisionTransformerV2")


def family_of(model: nn.Module) -> Family:
    """The family of a backbone (a subclass counts as its timm parent), or one line naming what it lacks."""
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    if all(hasattr(model, attr) for attr in ("blocks", "embed_dim", "reset_classifier", "pool")):
        return DUCK_TYPED
    name = type(model).__name__
    if name in HIERARCHICAL:
        reason = "a hierarchical model (stages of growing width, windowed or pooled attention)"
    elif not isinstance(getattr(model, "blocks", None), nn.Module):
        reason = "it has no sequence of transformer blocks (timm's blocks)"
    else:
        reason = "its blocks are not known to take an adapter beside their MLP"
    supported = ", ".join(n for n in FAMILIES if n not in ("HFBackbone", "VideoViT"))
    raise AdaptFormerError(f"{name}: not supported: {reason} (timm families supported: {supported})")
