"""Video ViTs built from timm's own ``Block``s: VideoMAE's architecture, and image ViTs inflated to video.

A clip (B, C, T, H, W) is cut into tubelets of ``tubelet_size`` frames x ``patch_size`` x ``patch_size`` pixels by a
Conv3d; each tubelet is a token. Position embeddings are VideoMAE's fixed sinusoidal table (no parameters, no
checkpoint key) or learned ones (inflated image backbones). There is no class token: features are the mean of
the tokens, normalised by ``fc_norm`` (which every task trains a copy of). The blocks are timm's ``Block``, so
the adapters, prompts and hooks of every method attach exactly as on image ViTs.

Registered names (any other width/depth through keyword arguments):

=============================  =====  =====  =====
name                           width  depth  heads
=============================  =====  =====  =====
videomae_small_patch16_224       384     12      6
videomae_base_patch16_224        768     12     12
videomae_large_patch16_224      1024     24     16
=============================  =====  =====  =====
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import AdaptFormerError

VIDEO_MODELS: dict[str, dict[str, Any]] = {
    "videomae_small_patch16_224": dict(embed_dim=384, depth=12, num_heads=6),
    "videomae_base_patch16_224": dict(embed_dim=768, depth=12, num_heads=12),
    "videomae_large_patch16_224": dict(embed_dim=1024, depth=24, num_heads=16),
}
POS_EMBEDS = ("sinusoid", "learned")


def sinusoid_table(positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed table: angle(p, j) = p / 10000^(2*(j//2)/dim), sin on even j, cos on odd j; (1, P, D)."""
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2).double() / dim
    angles = position / torch.pow(10000.0, exponent)[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


class TubeletEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, T/t * H/p * W/p, D) with one Conv3d of kernel and stride (t, p, p)."""

    def __init__(self, img_size: int, patch_size: int, num_frames: int, tubelet_size: int, embed_dim: int, in_chans=3):
        super().__init__()
        if num_frames % tubelet_size or img_size % patch_size:
            raise AdaptFormerError(
                f"num_frames {num_frames} / img_size {img_size}: must be multiples of the tubelet "
                f"{tubelet_size} / patch size {patch_size}"
            )
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.grid_size = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = math.prod(self.grid_size)
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or tuple(x.shape[2:]) != (self.num_frames, *self.img_size):
            raise AdaptFormerError(
                f"expected clips of shape (B, 3, {self.num_frames}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got {tuple(x.shape)}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class VideoViT(nn.Module):
    """A mean-pooled ViT over tubelet tokens, with timm's ``VisionTransformer`` interface where it matters
    (``blocks``, ``embed_dim``, ``forward_features``, ``pool``, ``forward_head``, ``reset_classifier``)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        drop_path_rate: float = 0.0,
        pos_embed: str = "sinusoid",
        norm_eps: float = 1e-6,
        num_classes: int = 0,
        name: str = "videomae",
        in_chans: int = 3,
    ):
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise AdaptFormerError(f"pos_embed: expected one of {', '.join(POS_EMBEDS)}, got {pos_embed!r}")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 0
        self.global_pool = "avg"
        self.patch_embed = TubeletEmbed(img_size, patch_size, num_frames, tubelet_size, embed_dim, in_chans)
        table = sinusoid_table(self.patch_embed.num_patches, embed_dim)
        if pos_embed == "sinusoid":
            self.register_buffer("pos_embed", table, persistent=False)  # fixed: not in checkpoints
        else:
            self.pos_embed = nn.Parameter(table)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace, meta-device safe
        self.blocks = nn.Sequential(
            *[
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias=qkv_bias,
                    init_values=init_values,
                    drop_path=rates[i],
                    norm_layer=norm_layer,
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.Identity()  # mean pooling: the features are normalised by fc_norm after pooling
        self.fc_norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.num_classes = num_classes
        self.pretrained_cfg = {
            "architecture": name,
            "input_size": (3, img_size, img_size),
            "num_frames": num_frames,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "crop_pct": 1.0,  # test clips: short side resized to the input size, then centre (or 3) crops
            "interpolation": "bilinear",
        }
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed.to(dtype=x.dtype if x.is_floating_point() else torch.float32)
        return self.norm(self.blocks(x))

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        return x.mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc_norm(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes else nn.Identity()


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def is_video_model(name: str) -> bool:
    return name in VIDEO_MODELS


def inflate_image_vit(image: nn.Module, num_frames: int, tubelet_size: int = 2, name: str | None = None) -> VideoViT:
    """The paper's "image backbone on video" setting: an image ViT's weights in a video ViT.

    The 2-D patch kernel is spread evenly over the tubelet (each of its t frames gets kernel / t, so a static
    clip embeds exactly as the image did), the spatial position embeddings are repeated over the T/t time steps,
    the class token is dropped (features are mean-pooled) and the image's final norm becomes ``fc_norm``.
    """
    block = image.blocks[0]
    dim = int(image.embed_dim)
    size = int(image.patch_embed.img_size[0])
    patch = int(image.patch_embed.patch_size[0])
    layer_scale = getattr(block.ls1, "gamma", None)
    video = VideoViT(
        img_size=size,
        patch_size=patch,
        num_frames=num_frames,
        tubelet_size=tubelet_size,
        embed_dim=dim,
        depth=len(image.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / dim,
        qkv_bias=block.attn.qkv.bias is not None,
        init_values=1e-5 if layer_scale is not None else None,
        pos_embed="learned",
        norm_eps=block.norm1.eps,
        name=name or (getattr(image, "pretrained_cfg", None) or {}).get("architecture", "image_vit"),
    ).to(dtype=next(image.parameters()).dtype)
    state = {k: v for k, v in image.state_dict().items() if k.startswith("blocks.")}
    weight = image.patch_embed.proj.weight
    state["patch_embed.proj.weight"] = weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size
    state["patch_embed.proj.bias"] = image.patch_embed.proj.bias
    spatial = image.pos_embed[:, getattr(image, "num_prefix_tokens", 1) :]
    grid = video.patch_embed.grid_size
    if spatial.shape[1] != grid[1] * grid[2]:
        spatial = resample_abs_pos_embed(spatial, new_size=grid[1:], num_prefix_tokens=0)
    state["pos_embed"] = spatial.repeat(1, grid[0], 1)
    norm = image.norm if not isinstance(image.norm, nn.Identity) else image.fc_norm
    if isinstance(norm, nn.LayerNorm):
        state["fc_norm.weight"], state["fc_norm.bias"] = norm.weight, norm.bias
    missing, unexpected = video.load_state_dict(state, strict=False)
    leftover = [k for k in missing if not k.startswith(("head.", "fc_norm."))]
    if leftover or unexpected:
        raise AdaptFormerError(
            f"cannot inflate {type(image).__name__}: missing {leftover[:3]}, unexpected {unexpected[:3]}"
        )
    return video
