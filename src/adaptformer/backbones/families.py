"""The backbone protocol: what a backbone must expose to be adapted, declared once per family.

AdaptFormer needs, of every transformer block, two points: x' (the input of the MLP branch, after the attention
residual) and m (the MLP branch's output, before the residual sum), so that ``y = x' + m + s·a(x')``. Everything
else differs between families and is declared here, not duck-typed where it is used:

* ``blocks(backbone)``: the blocks, in order, as one list (a hierarchical model's stages laid end to end);
* ``stages(backbone)``: which blocks form a stage and their width (Swin's 96/192/384/768 channels);
* ``anatomy(block)``: the module whose input is x' and the module whose output is m (:class:`BlockAnatomy`);
* ``width(block)``: the channels at x' (what an adapter at that block is sized to);
* ``feature_dim(backbone)`` and ``pool(backbone, tokens)``: what the task's head receives;
* ``input_spec(backbone)``: the size, frames, mean/std and crop it takes;
* ``no_prompts``: why prompt tokens (VPT) cannot enter this family's attention, where they cannot.

A class of no family is refused in one line naming it and what it lacks (``family_of``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from ..data.transforms import InputSpec
from ..errors import AdaptFormerError

RELATIVE_BIAS = (
    "its attention adds a relative position bias indexed by the patch grid (and class token), which has no "
    "entry for prompt tokens"
)
WINDOWED = (
    "its attention runs in windows of the patch grid (with a relative position bias per window), which has no "
    "place for prompt tokens (the VPT paper's Swin variant, prompts per window, is not implemented)"
)
WINDOWED_SAM = (
    "its tokens are an (H, W) grid that most blocks split into windows, with a relative position bias, which "
    "has no place for prompt tokens"
)
MASK_UNITS = "its attention groups the tokens into mask units of the patch grid, which has no place for prompt tokens"
PATCH_GRID_ATTENTION = (
    "its attention and MLP reshape the tokens to the patch grid (spatial-reduction attention, depthwise "
    "convolution), which has no place for prompts"
)
POOLED_ATTENTION = (
    "its attention pools queries, keys and values over the (frames x) height x width grid of the tokens, which "
    "has no place for prompts"
)
NO_MASK = "its attention takes no attention mask, which prompts of different lengths in one batch need"
PATCH_GRID = "its blocks reshape the tokens to the patch grid (local patch interaction), which has no place for prompts"
#: timm blocks whose MLP branch is not a residual beside x' (post-norm or parallel branches)
UNSUPPORTED_BLOCKS = {"ResPostBlock", "ParallelScalingBlock", "ParallelThingsBlock"}


#: the operations of timm's pre-norm ``Block`` a task can modulate, by name -> path inside the block
SITES = {
    "norm1": "norm1",
    "qkv": "attn.qkv",
    "proj": "attn.proj",
    "norm2": "norm2",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}


@dataclass(frozen=True)
class Site:
    """One operation of a block: (input width, output width, has a bias)."""

    name: str
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class BlockAnatomy:
    """Where a block's MLP branch starts and ends: the input of ``residual_at`` is x', the output of
    ``branch_at`` is m. ``shared_branch``: ``branch_at`` also ends the attention branch (one DropPath module
    called twice, CaiT), so only its call after ``residual_at`` ran is the MLP branch."""

    residual_at: nn.Module
    branch_at: nn.Module
    shared_branch: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    width: int
    blocks: range


def width_at(module: nn.Module) -> int:
    """Channels of the tensor entering ``module``: a LayerNorm's width, else its first Linear's input."""
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    linear = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
    if linear is None:
        raise AdaptFormerError(f"{type(module).__name__}: cannot tell the width of its input")
    return int(linear.in_features)


def prenorm_anatomy(block: nn.Module, index: int) -> BlockAnatomy:
    """timm's pre-norm ``Block`` and the many blocks shaped like it (``norm2``, ``mlp``, ``drop_path2``:
    ViT, Eva, BEiT, Swin, XCiT, SAM, Hiera, ...) and Hugging Face's ViT-like layers."""
    name = type(block).__name__
    parts = [getattr(block, n, None) for n in ("norm2", "mlp", "drop_path2")]
    if all(isinstance(p, nn.Module) for p in parts) and name not in UNSUPPORTED_BLOCKS:
        return BlockAnatomy(block.norm2, block.drop_path2)
    if name == "Dinov2Layer":  # its drop_path module serves both branches: the branch ends at layer_scale2
        return BlockAnatomy(block.norm2, block.layer_scale2)
    output = getattr(block, "output", None)
    if isinstance(getattr(block, "layernorm_after", None), nn.Module) and isinstance(
        getattr(output, "dropout", None), nn.Module
    ):  # Hugging Face ViT / VideoMAE / Swin: output.dense -> output.dropout, then + x'
        return BlockAnatomy(block.layernorm_after, output.dropout)
    if all(isinstance(getattr(block, n, None), nn.Module) for n in ("layer_norm2", "mlp", "self_attn")):
        return BlockAnatomy(block.layer_norm2, block.mlp)  # Hugging Face CLIP / SigLIP: + x' right after mlp
    raise AdaptFormerError(
        f"block {index} ({name}) is not a pre-norm transformer block (timm's norm2/mlp/drop_path2 or Hugging "
        "Face's layernorm_after/output): no place to put an adapter beside its MLP"
    )


def postnorm_anatomy(block: nn.Module, index: int) -> BlockAnatomy:
    """Swin V2's res-post-norm block: ``y = x' + drop_path2(norm2(mlp(x')))``, x' enters ``mlp`` directly."""
    return BlockAnatomy(block.mlp, block.drop_path2)


def shared_drop_path_anatomy(block: nn.Module, index: int) -> BlockAnatomy:
    """CaiT's ``LayerScaleBlock``: ``y = x' + drop_path(gamma_2 * mlp(norm2(x')))`` with the same
    ``drop_path`` module ending the attention branch before it."""
    return BlockAnatomy(block.norm2, block.drop_path, shared_branch=True)


def mvit_anatomy(block: nn.Module, index: int) -> BlockAnatomy:
    """MViTv2's ``MultiScaleBlock``: pre-norm like timm's Block where the widening happens in the attention
    (``expand_attn``, every timm config); where the MLP widens instead, its shortcut is a projection and x'
    and m differ in width, which a parallel adapter of one width cannot bridge."""
    if getattr(block, "shortcut_proj_mlp", None) is not None:
        raise AdaptFormerError(
            f"block {index} (MultiScaleBlock): its MLP widens the tokens and its shortcut is a projection, so x' "
            "and the MLP branch differ in width (build MViTv2 with expand_attn=True, timm's default)"
        )
    return prenorm_anatomy(block, index)


@dataclass(frozen=True)
class Family:
    """One backbone family's answers to the protocol (see the module docstring)."""

    name: str
    #: why prompts (VPT deep / shallow / kv) cannot be inserted, or None where they can
    no_prompts: str | None = None
    #: pool with the backbone's own ``forward_head(tokens, pre_logits=True)`` (its classifier reset to an
    #: identity by the adapted model), where it has no ``pool`` of timm's VisionTransformer
    pools_in_head: bool = False
    #: where the blocks are: ``blocks`` (one sequence), else the attribute holding the stages, each with its
    #: ``blocks`` (Swin's ``layers``, PVT v2's ``stages``)
    layout: str = "blocks"
    #: post-norm / shared-DropPath blocks declare their own anatomy; None: the pre-norm one
    block_anatomy: object = None

    def blocks(self, backbone: nn.Module) -> list[nn.Module]:
        return [block for stage in self._stage_modules(backbone) for block in stage]

    def stages(self, backbone: nn.Module) -> list[Stage]:
        """The stages the model declares (Swin's ``layers``), else runs of blocks of one width (Hiera's
        ``blocks``); a plain ViT has one, named ``blocks``."""
        widths = [self.width(block, index) for index, block in enumerate(self.blocks(backbone))]
        if self.layout == "blocks":
            sizes = [len(list(run)) for _, run in itertools.groupby(widths)]
        else:
            sizes = [len(blocks) for blocks in self._stage_modules(backbone) if blocks]
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        if len(sizes) == 1:
            return [Stage("blocks", widths[0], range(len(widths)))]
        return [
            Stage(f"stage {number}", widths[start], range(start, start + size))
            for number, (start, size) in enumerate(zip(starts, sizes, strict=True), 1)
        ]

    def _stage_modules(self, backbone: nn.Module) -> list[list[nn.Module]]:
        if self.layout != "blocks":  # hierarchical: stages, each with its blocks
            return [list(stage.blocks) for stage in getattr(backbone, self.layout)]
        return [list(backbone.blocks)]

    def anatomy(self, block: nn.Module, index: int) -> BlockAnatomy:
        return (self.block_anatomy or prenorm_anatomy)(block, index)

    def width(self, block: nn.Module, index: int) -> int:
        return width_at(self.anatomy(block, index).residual_at)

    def embed_dim(self, backbone: nn.Module) -> int:
        """Width of the first block's tokens (what task files record as the backbone's width)."""
        embed_dim = getattr(backbone, "embed_dim", None)
        return int(embed_dim) if isinstance(embed_dim, int) else self.width(self.blocks(backbone)[0], 0)

    def feature_dim(self, backbone: nn.Module) -> int:
        """Width of the pooled features the head receives (Swin: its last stage's, not ``embed_dim``)."""
        return int(getattr(backbone, "num_features", None) or backbone.embed_dim)

    def input_spec(self, backbone: nn.Module) -> InputSpec:
        """Size, frames, mean/std, crop and interpolation the backbone takes: timm's ``pretrained_cfg`` at the
        size the model was built for (its patch embedding's, else the model's own ``img_size``)."""
        patch_embed = getattr(backbone, "patch_embed", None)
        size = getattr(patch_embed, "img_size", None) or getattr(backbone, "img_size", None)
        side = size[-1] if isinstance(size, (tuple, list)) else size
        frames = getattr(patch_embed, "num_frames", None) or getattr(backbone, "num_frames", None) or 1
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        return InputSpec.from_pretrained_cfg(cfg, int(side) if isinstance(side, int) else None, int(frames))

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
    "SwinTransformer": Family("timm Swin", no_prompts=WINDOWED, pools_in_head=True, layout="layers"),
    "SwinTransformerV2": Family(
        "timm Swin V2", no_prompts=WINDOWED, pools_in_head=True, layout="layers", block_anatomy=postnorm_anatomy
    ),
    "Cait": Family("timm CaiT", no_prompts=NO_MASK, pools_in_head=True, block_anatomy=shared_drop_path_anatomy),
    "Xcit": Family("timm XCiT", no_prompts=PATCH_GRID, pools_in_head=True),
    "VisionTransformerSAM": Family("timm SAM ViT", no_prompts=WINDOWED_SAM, pools_in_head=True),
    "Hiera": Family("timm Hiera", no_prompts=MASK_UNITS, pools_in_head=True),
    "NaFlexVit": Family("timm NaFlexViT", pools_in_head=True),
    "PyramidVisionTransformerV2": Family(
        "timm PVT v2", no_prompts=PATCH_GRID_ATTENTION, pools_in_head=True, layout="stages"
    ),
    "MultiScaleVit": Family(
        "timm MViTv2", no_prompts=POOLED_ATTENTION, pools_in_head=True, layout="stages", block_anatomy=mvit_anatomy
    ),
    "VideoViT": Family("video ViT (VideoMAE)"),
    "HFSwinBackbone": Family("Hugging Face Swin", no_prompts=WINDOWED, layout="layers"),
    "HFBackbone": Family("Hugging Face"),
}
#: a class of none of these that has timm VisionTransformer's interface (a user's own subclass-alike)
DUCK_TYPED = Family("VisionTransformer-like")


def class_name(backbone: nn.Module) -> str:
    """The backbone's class as users know it (a wrapped Hugging Face model: its transformers class)."""
    return getattr(backbone, "kind", None) or type(backbone).__name__


def input_spec_of(backbone: nn.Module) -> InputSpec:
    """The preprocessing a backbone takes (see ``Family.input_spec``)."""
    return family_of(backbone).input_spec(backbone)


def family_of(model: nn.Module) -> Family:
    """The family of a backbone (a subclass counts as its timm parent), or one line naming what it lacks."""
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    if all(hasattr(model, attr) for attr in ("blocks", "embed_dim", "reset_classifier", "pool")):
        return DUCK_TYPED
    name = type(model).__name__
    if not isinstance(getattr(model, "blocks", None), nn.Module):
        reason = "it has no sequence of transformer blocks (timm's blocks)"
    else:
        reason = "its blocks are not known to take an adapter beside their MLP"
    supported = ", ".join(n for n in FAMILIES if not n.startswith("HF") and n != "VideoViT")
    raise AdaptFormerError(f"{name}: not supported: {reason} (timm families supported: {supported})")
