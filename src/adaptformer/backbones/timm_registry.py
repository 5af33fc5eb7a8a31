"""This library's own backbones in timm's model registry, so timm builds them like any of its models:

    timm.create_model("videomae_base_patch16_224", pretrained=True)           # VideoMAE weights from the Hub
    timm.create_model("videomae_small_patch16_224", num_frames=8)             # any shape, random weights
    timm.create_model("vit_tiny_patch4_32.adaptformer_cifar10", pretrained=True)   # the packaged backbone

Each name has a default config (timm's ``pretrained_cfg``: where the weights are, mean/std, crop, interpolation)
and its checkpoint converter as a timm-style ``pretrained_filter_fn`` (``video_checkpoints.video_filter_fn``;
timm's own ViT filter for the packaged backbone, which resamples position embeddings at other input sizes).
Importing this module registers them (``adaptformer`` imports it).
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .embedded import VIT_TINY_CIFAR10
from .video import VIDEO_MODELS, VideoViT
from .video_checkpoints import video_filter_fn

#: Hugging Face repositories of the official VideoMAE pretraining weights (Kinetics-400, 1600 epochs)
VIDEOMAE_HUB = {
    "videomae_base_patch16_224": "MCG-NJU/videomae-base",
    "videomae_large_patch16_224": "MCG-NJU/videomae-large",
}
EMBEDDED_ARCHITECTURE = "vit_tiny_patch4_32"  # the packaged backbone's shape, as a timm architecture
EMBEDDED_TAG = "adaptformer_cifar10"
#: embedded name -> its timm name
EMBEDDED_TIMM_NAMES = {VIT_TINY_CIFAR10.name: f"{EMBEDDED_ARCHITECTURE}.{EMBEDDED_TAG}"}


def _video_cfg(name: str) -> dict[str, Any]:
    hub = {"hf_hub_id": VIDEOMAE_HUB[name], "hf_hub_filename": "model.safetensors"} if name in VIDEOMAE_HUB else {}
    return {
        **hub,
        "input_size": (3, 224, 224),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "crop_pct": 1.0,  # test clips: short side resized to the input size, then centre (or 3) crops
        "interpolation": "bilinear",
        "num_classes": 0,  # pretraining weights: no classifier
        "classifier": None,
        "license": "cc-by-nc-4.0",
        "paper_ids": "arXiv:2203.12602",
    }


default_cfgs = generate_default_cfgs(
    {
        **{name: _video_cfg(name) for name in VIDEO_MODELS},
        f"{EMBEDDED_ARCHITECTURE}.{EMBEDDED_TAG}": {
            "file": str(VIT_TINY_CIFAR10.weights_path()),
            "input_size": (3, 32, 32),
            "mean": VIT_TINY_CIFAR10.mean,
            "std": VIT_TINY_CIFAR10.std,
            "crop_pct": 1.0,
            "interpolation": "bicubic",
            "num_classes": 10,
            "classifier": "head",
            "description": VIT_TINY_CIFAR10.description,
        },
    }
)


def _video(name: str, pretrained: bool, **kwargs: Any) -> VideoViT:
    shape = {**VIDEO_MODELS[name], **kwargs}
    # checked by the filter itself (VideoMAE pretraining weights have no fc_norm): timm then loads non-strictly
    return build_model_with_cfg(
        VideoViT, name, pretrained, pretrained_filter_fn=video_filter_fn, pretrained_strict=False, name=name, **shape
    )


@register_model
def videomae_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VideoViT:
    return _video("videomae_small_patch16_224", pretrained, **kwargs)


@register_model
def videomae_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VideoViT:
    return _video("videomae_base_patch16_224", pretrained, **kwargs)


@register_model
def videomae_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> VideoViT:
    return _video("videomae_large_patch16_224", pretrained, **kwargs)


@register_model
def vit_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The packaged backbone's architecture (width 192, depth 6, patch 4, 32 px)."""
    shape = {**VIT_TINY_CIFAR10.timm_kwargs, **kwargs}
    return build_model_with_cfg(
        VisionTransformer, EMBEDDED_ARCHITECTURE, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **shape
    )
