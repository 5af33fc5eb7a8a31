"""Hugging Face ``transformers`` ViT and VideoMAE models as backbones, wrapped (not copied).

``HFBackbone`` gives a ``ViTModel`` / ``ViTForImageClassification`` / ``VideoMAEModel`` /
``VideoMAEForVideoClassification`` the interface the adapted model uses (``blocks``, ``embed_dim``,
``forward_features``, ``pool``, ``reset_classifier``). The tasks' hooks go on HF's own layers: x', the
attention residual, is the input of ``layernorm_after``; the MLP branch is the output of ``output.dropout``
(``backbones/taps.py``). Image models pool the class token after the final layernorm; VideoMAE averages the
tokens, and a classification model's ``fc_norm`` is what each task's trainable copy starts from. Clips are
(B, C, T, H, W) as everywhere in this library and are handed to HF as (B, T, C, H, W).

``create_backbone("hf:<folder or hub id>")`` loads one with ``AutoModel.from_pretrained`` (a folder written by
``save_pretrained`` works offline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import AdaptFormerError
from ..utils.extras import require

HF_PREFIX = "hf:"
SUPPORTED = (
    "ViTModel",
    "ViTForImageClassification",
    "Dinov2Model",
    "Dinov2ForImageClassification",
    "VideoMAEModel",
    "VideoMAEForVideoClassification",
)
#: the preprocessing of HF's image processors: ViT's [-1, 1] scaling; DINOv2's ImageNet statistics, short side
#: 256 then a 224 centre crop (its config's image_size, 518, is the pretraining size, not what users run)
DINOV2_INPUT = {
    "size": 224,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "crop_pct": 224 / 256,
    "interpolation": "bicubic",
}


def is_transformers_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.")


def is_hf_model(model: nn.Module) -> bool:
    return type(model).__name__ in SUPPORTED and is_transformers_model(model)


class HFBackbone(nn.Module):
    def __init__(self, model: nn.Module, name: str | None = None):
        super().__init__()
        kind = type(model).__name__
        if kind not in SUPPORTED:
            raise AdaptFormerError(f"{kind}: not a supported transformers model ({', '.join(SUPPORTED)})")
        self.video = kind.startswith("VideoMAE")
        config = model.config
        pretrained_fc_norm = getattr(model, "fc_norm", None) if kind == "VideoMAEForVideoClassification" else None
        self.model = next((getattr(model, n) for n in ("videomae", "vit", "dinov2") if hasattr(model, n)), model)
        dinov2 = kind.startswith("Dinov2")
        self.embed_dim = self.num_features = int(config.hidden_size)
        self.num_prefix_tokens = 0 if self.video else 1
        if self.video:  # mean pooling: tasks train a copy of this norm (the classifier's, or a fresh one)
            self.fc_norm = pretrained_fc_norm or nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.head = nn.Identity()
        frames = int(getattr(config, "num_frames", 1)) if self.video else 1
        size = DINOV2_INPUT["size"] if dinov2 else int(config.image_size)
        self.img_size, self.num_frames = (size, size), frames  # what families.Family.input_spec reads
        self.pretrained_cfg = {
            "architecture": name or getattr(config, "_name_or_path", None) or kind,
            "input_size": (3, size, size),
            "mean": IMAGENET_MEAN if self.video else (0.5, 0.5, 0.5),  # the HF image processors' defaults
            "std": IMAGENET_STD if self.video else (0.5, 0.5, 0.5),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
        }
        if dinov2:
            self.pretrained_cfg.update({k: DINOV2_INPUT[k] for k in ("mean", "std", "crop_pct", "interpolation")})

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.video:
            return self.model(pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state
        return self.model(pixel_values=x).last_hidden_state  # ViTModel applies its final layernorm

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        return x.mean(dim=1) if self.video else x[:, 0]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if num_classes:
            raise AdaptFormerError("an HF backbone has no classifier of its own; tasks bring their heads")


def from_pretrained(reference: str, **kwargs: Any) -> HFBackbone:
    """``hf:<folder or hub id>`` -> the wrapped base model."""
    transformers = require("transformers", f"model {reference}")
    AutoConfig, AutoModel = transformers.AutoConfig, transformers.AutoModel  # noqa: N806

    source = reference[len(HF_PREFIX) :]
    try:
        config = AutoConfig.from_pretrained(source)
        model = AutoModel.from_pretrained(source, config=config, **kwargs)
    except (OSError, ValueError) as error:
        raise AdaptFormerError(f"model {reference}: cannot load ({str(error).strip().splitlines()[0][:160]})") from None
    if not is_hf_model(model):
        raise AdaptFormerError(f"model {reference}: a {type(model).__name__}; expected one of {', '.join(SUPPORTED)}")
    return HFBackbone(model, name=reference)


def wrap_if_hf(model: nn.Module) -> nn.Module:
    if is_transformers_model(model) and not is_hf_model(model):
        raise AdaptFormerError(
            f"transformers {type(model).__name__}: not supported yet (supported: {', '.join(SUPPORTED)}); many "
            "of these weights also exist in timm, which adapts more families (e.g. timm.create_model("
            "'vit_base_patch16_clip_224.openai'), 'vit_base_patch16_siglip_224', 'vit_small_patch14_dinov2')"
        )
    return HFBackbone(model) if is_hf_model(model) else model


def folder_name(path: str | Path) -> str:
    return f"{HF_PREFIX}{path}"
