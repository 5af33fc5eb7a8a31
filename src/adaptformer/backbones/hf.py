"""Hugging Face ``transformers`` vision models as backbones, wrapped (not copied): ViT, DINOv2, VideoMAE,
CLIP's and SigLIP's vision towers and Swin, each base model and its ``*ForImageClassification``.

``HFBackbone`` gives them the interface the adapted model uses (``blocks``, ``embed_dim``, ``forward_features``,
``pool``, ``reset_classifier``). The tasks' hooks go on HF's own layers (``families.py`` declares where: x' is
the input of ``layernorm_after`` / ``norm2`` / ``layer_norm2``, the MLP branch the output of
``output.dropout`` / ``layer_scale2`` / ``mlp``). Tokens are pooled as each class pools them (``KINDS``);
VideoMAE averages the tokens, and a classification model's ``fc_norm`` is what each task's trainable copy
starts from. Clips are (B, C, T, H, W) as everywhere in this library and are handed to HF as (B, T, C, H, W).

``create_backbone("hf:<folder or hub id>")`` loads one with ``AutoModel.from_pretrained`` (a folder written by
``save_pretrained`` works offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import AdaptFormerError
from ..utils.extras import require

HF_PREFIX = "hf:"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class HFKind:
    """How one transformers class is used: where its vision tower is, how tokens are pooled (as the class
    itself pools them for its pooler output or its classifier), and its image processor's defaults."""

    tower: tuple[str, ...]  # attribute holding the base model, tried in order (the model itself when absent)
    pooling: str  # cls | mean | mean_patches | head (SigLIP's attention-pooling head) | none (Swin: mean)
    final_norm: str | None  # the base model's final norm, where its last_hidden_state is taken before it
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    size: int | None = None  # the size users run (DINOv2's config holds its pretraining size, 518)


_VIT = HFKind(("vit",), "cls", None)
#: DINOv2's processor: ImageNet statistics, short side 256 then a 224 centre crop
_DINOV2 = HFKind(("dinov2",), "cls", None, IMAGENET_MEAN, IMAGENET_STD, 224 / 256, "bicubic", 224)
_VIDEOMAE = HFKind(("videomae",), "mean", None, IMAGENET_MEAN, IMAGENET_STD)
KINDS: dict[str, HFKind] = {
    "ViTModel": _VIT,
    "ViTForImageClassification": _VIT,
    "Dinov2Model": _DINOV2,
    "Dinov2ForImageClassification": _DINOV2,
    "VideoMAEModel": _VIDEOMAE,
    "VideoMAEForVideoClassification": _VIDEOMAE,
    # CLIP: its pooler output is post_layernorm(class token); its classifier averages the patch tokens unnormed
    "CLIPVisionModel": HFKind(("vision_model",), "cls", "post_layernorm", CLIP_MEAN, CLIP_STD, 1.0, "bicubic"),
    "CLIPForImageClassification": HFKind(("vision_model",), "mean_patches", None, CLIP_MEAN, CLIP_STD, 1.0, "bicubic"),
    # SigLIP: its pooler output is the attention-pooling head; its classifier averages the tokens
    "SiglipVisionModel": HFKind(("vision_model",), "head", None, interpolation="bicubic"),
    # the dual-encoder checkpoints users name (openai/clip-vit-base-patch16, google/siglip-base-patch16-224):
    # their vision tower, pooled as its vision model pools; the text tower is not kept
    "CLIPModel": HFKind(("vision_model",), "cls", "post_layernorm", CLIP_MEAN, CLIP_STD, 1.0, "bicubic"),
    "SiglipModel": HFKind(("vision_model",), "head", None, interpolation="bicubic"),
    "SiglipForImageClassification": HFKind(("vision_model",), "mean", None, interpolation="bicubic"),
    "SwinModel": HFKind(("swin",), "mean", None, IMAGENET_MEAN, IMAGENET_STD, 1.0, "bicubic"),
    "SwinForImageClassification": HFKind(("swin",), "mean", None, IMAGENET_MEAN, IMAGENET_STD, 1.0, "bicubic"),
}
SUPPORTED = tuple(KINDS)


def is_transformers_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.")


def is_hf_model(model: nn.Module) -> bool:
    return type(model).__name__ in SUPPORTED and is_transformers_model(model)


class HFBackbone(nn.Module):
    """A transformers vision model seen through the interface the adapted model uses (``blocks``,
    ``embed_dim``, ``num_features``, ``forward_features``, ``pool``, ``reset_classifier``, ``pretrained_cfg``)."""

    def __init__(self, model: nn.Module, name: str | None = None):
        super().__init__()
        kind = type(model).__name__
        if kind not in KINDS:
            raise AdaptFormerError(f"{kind}: not a supported transformers model ({', '.join(SUPPORTED)})")
        self.kind, spec = kind, KINDS[kind]
        self.video = kind.startswith("VideoMAE")
        config = getattr(model.config, "vision_config", None) or model.config
        pretrained_fc_norm = getattr(model, "fc_norm", None) if kind == "VideoMAEForVideoClassification" else None
        self.model = next((getattr(model, n) for n in spec.tower if hasattr(model, n)), model)
        self.pooling, self.final_norm = spec.pooling, spec.final_norm
        self.embed_dim = int(getattr(config, "embed_dim", None) or config.hidden_size)
        self.num_features = int(getattr(self.model, "num_features", None) or config.hidden_size)
        self.num_prefix_tokens = 1 if spec.pooling in ("cls", "mean_patches") else 0
        if self.video:  # mean pooling: tasks train a copy of this norm (the classifier's, or a fresh one)
            self.fc_norm = pretrained_fc_norm or nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.head = nn.Identity()
        frames = int(getattr(config, "num_frames", 1)) if self.video else 1
        size = spec.size or int(config.image_size)
        self.img_size, self.num_frames = (size, size), frames  # what families.Family.input_spec reads
        self.pretrained_cfg = {
            "architecture": name or getattr(model.config, "_name_or_path", None) or kind,
            "input_size": (3, size, size),
            "mean": spec.mean,
            "std": spec.std,
            "crop_pct": spec.crop_pct,
            "interpolation": spec.interpolation,
        }

    @property
    def blocks(self) -> list[nn.Module]:
        encoder = self.model.encoder
        if hasattr(encoder, "layer") and not hasattr(encoder.layer[0], "blocks"):
            return list(encoder.layer)  # ViT, DINOv2, VideoMAE
        if hasattr(encoder.layers[0], "blocks"):  # Swin: stages of blocks
            return [block for stage in encoder.layers for block in stage.blocks]
        return list(encoder.layers)  # CLIP, SigLIP

    @property
    def layers(self) -> list[nn.Module]:
        """A hierarchical model's stages, each with its ``blocks`` (Swin)."""
        return list(self.model.encoder.layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.video:
            return self.model(pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state
        tokens = self.model(pixel_values=x).last_hidden_state  # ViT, DINOv2, SigLIP, Swin apply their final norm
        return getattr(self.model, self.final_norm)(tokens) if self.final_norm else tokens

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        if self.pooling == "cls":
            return x[:, 0]
        if self.pooling == "mean_patches":
            return x[:, 1:].mean(dim=1)
        if self.pooling == "head":
            return self.model.head(x)
        return x.mean(dim=1)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if num_classes:
            raise AdaptFormerError("an HF backbone has no classifier of its own; tasks bring their heads")


class HFSwinBackbone(HFBackbone):
    """Hugging Face Swin: stages of growing width (its own family in ``families.py``)."""


def wrap(model: nn.Module, name: str | None = None) -> HFBackbone:
    return (HFSwinBackbone if type(model).__name__.startswith("Swin") else HFBackbone)(model, name=name)


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
    return wrap(model, name=reference)


def wrap_if_hf(model: nn.Module) -> nn.Module:
    if is_transformers_model(model) and not is_hf_model(model):
        raise AdaptFormerError(
            f"transformers {type(model).__name__}: not supported yet (supported: {', '.join(SUPPORTED)}); many "
            "of these weights also exist in timm, which adapts more families (e.g. timm.create_model("
            "'vit_base_patch16_clip_224.openai'), 'vit_base_patch16_siglip_224', 'vit_small_patch14_dinov2')"
        )
    return wrap(model) if is_hf_model(model) else model


def folder_name(path: str | Path) -> str:
    return f"{HF_PREFIX}{path}"
