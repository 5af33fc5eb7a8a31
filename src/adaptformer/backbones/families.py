"""The backbone protocol: what the adapted model asks of a backbone. Discovery answers it for every model
(``anatomy.py``: the blocks, where each block's MLP branch starts and ends, the widths, the operations, the pooled
width); a family declares only what discovery cannot know:

* ``no_prompts``: why prompt tokens (VPT) cannot enter its attention, or None where they are declared safe (a
  found model never takes prompts: whether its attention has room for them is not something a probe can tell);
* ``attention_mask``: its blocks take an ``attn_mask`` keyword (mixed batches of prompts of different lengths);
* ``pools_in_head``: its features are pooled by its own ``forward_head(tokens, pre_logits=True)`` (the classifier
  reset to an identity) rather than by a ``pool`` of timm's VisionTransformer.

Families are declared with :func:`register_family` under their class names (timm's, or Hugging Face's transformers
class for a wrapped model); a model of none of them is adapted as found (``FOUND``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from ..data.transforms import InputSpec
from ..errors import AdaptFormerError
from .anatomy import Anatomy
from .discovery import discover, probe_input
from .hf import HFBackbone

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
#: input sides the probe tries after the backbone's own, for models that do not say what size they were built for
PROBE_SIZES = (224, 256, 384, 512, 64, 32)
FOUND_BY_ANATOMY = (
    "its blocks were found by their anatomy, not declared, and prompts are offered only where a family declares "
    "its attention safe for them (timm ViT, DeiT, EVA-02, NaFlexViT, VideoMAE; Hugging Face ViT, DINOv2, "
    "VideoMAE, CLIP, SigLIP)"
)


@dataclass(frozen=True)
class Stage:
    name: str
    width: int
    blocks: range


@dataclass(frozen=True)
class Family:
    """What one family declares beyond what discovery finds (see the module docstring)."""

    name: str
    no_prompts: str | None = None
    attention_mask: bool = False
    pools_in_head: bool = True

    def anatomy(self, backbone: nn.Module, keep_switches: bool = False) -> Anatomy:
        """The backbone's anatomy, found by one probe forward at its input size (``anatomy.discover``)."""
        spec = self.input_spec(backbone)
        reference = next(iter(backbone.parameters()), None)
        if reference is None or reference.is_meta:
            raise AdaptFormerError(f"{class_name(backbone)}: its weights are not materialised (meta device)")
        return discover(
            backbone,
            lambda x: self.pool(backbone, backbone.forward_features(x)),
            [probe_input(size, spec.frames, reference) for size in dict.fromkeys((spec.size, *PROBE_SIZES))],
            keep_switches=keep_switches,
            label=class_name(backbone),
        )

    def input_spec(self, backbone: nn.Module) -> InputSpec:
        """Size, frames, mean/std, crop and interpolation the backbone takes: timm's ``pretrained_cfg`` at the
        size the model was built for (its patch embedding's, else the model's own ``img_size``)."""
        patch_embed = getattr(backbone, "patch_embed", None)
        size = getattr(patch_embed, "img_size", None) or getattr(backbone, "img_size", None)
        grid, stride = getattr(backbone, "tokens_spatial_shape", None), getattr(backbone, "patch_stride", None)
        if size is None and grid and stride:  # Hiera: the token grid times the patch stride
            size = [g * s for g, s in zip(grid, stride, strict=False)]
        side = size[-1] if isinstance(size, (tuple, list)) else size
        frames = getattr(patch_embed, "num_frames", None) or getattr(backbone, "num_frames", None) or 1
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        return InputSpec.from_pretrained_cfg(cfg, int(side) if isinstance(side, int) else None, int(frames))

    def pool(self, backbone: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        if self.pools_in_head:
            return backbone.forward_head(tokens, pre_logits=True)
        return backbone.pool(tokens)


def stages_of(widths: tuple[int, ...]) -> list[Stage]:
    """Runs of blocks of one width are the stages (Swin's 96/192/384/768); a plain ViT has one, ``blocks``."""
    sizes = [len(list(run)) for _, run in itertools.groupby(widths)]
    if len(sizes) == 1:
        return [Stage("blocks", widths[0], range(len(widths)))]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    return [
        Stage(f"stage {number}", widths[start], range(start, start + size))
        for number, (start, size) in enumerate(zip(starts, sizes, strict=True), 1)
    ]


FAMILIES: dict[str, Family] = {}


def register_family(family: Family, *class_names: str) -> Family:
    """Declare ``family`` for the classes named (a subclass counts as its parent; a wrapped Hugging Face model
    by its transformers class)."""
    for name in class_names:
        FAMILIES[name] = family
    return family


_PROMPTS = {"attention_mask": True}
register_family(Family("timm ViT", pools_in_head=False, **_PROMPTS), "VisionTransformer")
register_family(Family("timm Eva (EVA-02, RoPE ViT)", pools_in_head=False, **_PROMPTS), "Eva")  # rotary: model.py
register_family(Family("timm DeiT distilled", **_PROMPTS), "VisionTransformerDistilled")  # mean of cls and dist
register_family(Family("timm NaFlexViT", **_PROMPTS), "NaFlexVit")
register_family(Family("video ViT (VideoMAE)", pools_in_head=False, **_PROMPTS), "VideoViT")
register_family(Family("timm BEiT", no_prompts=RELATIVE_BIAS), "Beit")
register_family(Family("timm ViT relpos", no_prompts=RELATIVE_BIAS), "VisionTransformerRelPos")
register_family(Family("timm Swin", no_prompts=WINDOWED), "SwinTransformer", "SwinTransformerV2")
register_family(Family("timm CaiT", no_prompts=NO_MASK), "Cait")
register_family(Family("timm XCiT", no_prompts=PATCH_GRID), "Xcit")
register_family(Family("timm SAM ViT", no_prompts=WINDOWED_SAM), "VisionTransformerSAM")
register_family(Family("timm Hiera", no_prompts=MASK_UNITS), "Hiera", "HieraDet")
register_family(Family("timm PVT v2", no_prompts=PATCH_GRID_ATTENTION), "PyramidVisionTransformerV2")
register_family(Family("timm MViTv2", no_prompts=POOLED_ATTENTION), "MultiScaleVit")
# Hugging Face models, wrapped (``hf.py``): declared by their transformers class
register_family(
    Family("Hugging Face ViT-like", pools_in_head=False),
    "ViTModel",
    "ViTForImageClassification",
    "Dinov2Model",
    "Dinov2ForImageClassification",
    "VideoMAEModel",
    "VideoMAEForVideoClassification",
    "CLIPVisionModel",
    "CLIPForImageClassification",
    "CLIPModel",
    "SiglipVisionModel",
    "SiglipModel",
    "SiglipForImageClassification",
)
register_family(
    Family("Hugging Face Swin", no_prompts=WINDOWED, pools_in_head=False),
    "SwinModel",
    "SwinForImageClassification",
)
#: every other model: its anatomy as found, prompts not offered
FOUND = Family("found by its anatomy", no_prompts=FOUND_BY_ANATOMY)


def class_name(backbone: nn.Module) -> str:
    """The backbone's class as users know it (a wrapped Hugging Face model: its transformers class)."""
    return getattr(backbone, "kind", None) or type(backbone).__name__


def input_spec_of(backbone: nn.Module) -> InputSpec:
    """The preprocessing a backbone takes (see ``Family.input_spec``)."""
    return family_of(backbone).input_spec(backbone)


def family_of(model: nn.Module) -> Family:
    """The declared family of a backbone (a subclass counts as its timm parent), else ``FOUND``; one line naming
    what it lacks when it has not the interface the adapted model calls."""
    if isinstance(model, HFBackbone):  # declared by its transformers class
        family = FAMILIES.get(model.kind)
    else:  # a subclass counts as its timm parent
        family = next((FAMILIES[c.__name__] for c in type(model).__mro__ if c.__name__ in FAMILIES), None)
    if family is None:
        family = FOUND
    wanted = ("forward_features", "reset_classifier", "forward_head" if family.pools_in_head else "pool")
    missing = [attr for attr in wanted if not callable(getattr(model, attr, None))]
    if missing:
        raise AdaptFormerError(
            f"{class_name(model)}: not supported: it has no {', '.join(missing)} (timm's model interface; a "
            "Hugging Face model is wrapped by adaptformer.adapt)"
        )
    return family
