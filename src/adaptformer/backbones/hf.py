"""Hugging Face ``transformers`` vision models as backbones, wrapped (not copied): any class whose main input is
``pixel_values`` — ViT, DeiT, BEiT, Data2Vec, DINOv2 (with registers), DINOv3, I-JEPA, MSN, MAE, CLIP, MetaCLIP 2,
MLCD, SigLIP, SigLIP 2, AIMv2, Swin, Swin V2, Hiera, PVT v2, VideoMAE, TimeSformer, ViViT, ... — base models,
``*ForImageClassification`` and dual encoders (their vision tower).

``HFBackbone`` gives them the interface the adapted model uses (``forward_features``, ``forward_head`` /
``pool``, ``reset_classifier``, ``pretrained_cfg``). The blocks and their MLPs are found by discovery
(``anatomy.py``) on HF's own layers, like any model's. What discovery cannot know is read off the model:

* **pooling**, as the class itself pools (``KINDS`` for the classes whose classifier pools otherwise than their
  pooler output; for the rest, found by one probe: the pooler output the model returns, matched against the class
  token, the normed class token, the mean of the tokens, and the model's own pooler / attention-pooling head; a
  ``dense + tanh`` pooler, untrained in most checkpoints, is passed over for the class token as HF's own
  classifiers do);
* **preprocessing**: the ``preprocessor_config.json`` next to the weights where there is one, else the class's
  processor defaults (``KINDS``, ``MEAN_STD``);
* **clips**: a config with ``num_frames`` takes clips, (B, C, T, H, W) in this library, handed to HF as
  (B, T, C, H, W).

``create_backbone("hf:<folder or hub id>")`` loads one with ``AutoModel.from_pretrained`` (a folder written by
``save_pretrained`` works offline).
"""

from __future__ import annotations

import inspect
import json
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
HALF = (0.5, 0.5, 0.5)
#: processor defaults by ``config.model_type`` where a folder brings no preprocessor_config.json (else ImageNet's)
MEAN_STD = {
    **dict.fromkeys(
        ("clip", "clip_vision_model", "metaclip_2", "mlcd", "aimv2", "aimv2_vision_model"), (CLIP_MEAN, CLIP_STD)
    ),
    **dict.fromkeys(
        ("vit", "beit", "data2vec-vision", "siglip", "siglip_vision_model", "siglip2", "vivit"), (HALF, HALF)
    ),
    **dict.fromkeys(("siglip2_vision_model", "vit_msn"), (HALF, HALF)),
}


@dataclass(frozen=True)
class HFKind:
    """A class whose pooling or preprocessing is declared: its vision tower, how tokens are pooled (as the class
    itself pools them for its classifier), and its image processor's defaults."""

    tower: tuple[str, ...]  # attribute holding the base model, tried in order (the model itself when absent)
    pooling: str  # cls | mean | mean_patches | head (the tower's attention-pooling head) | cls_norm
    final_norm: str | None = None  # the tower's final norm, where its last_hidden_state is taken before it
    mean: tuple[float, ...] = HALF
    std: tuple[float, ...] = HALF
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    size: int | None = None  # the size users run (DINOv2's config holds its pretraining size, 518)


_VIT = HFKind(("vit",), "cls")
#: DINOv2's processor: ImageNet statistics, short side 256 then a 224 centre crop
_DINOV2 = HFKind(("dinov2",), "cls", None, IMAGENET_MEAN, IMAGENET_STD, 224 / 256, "bicubic", 224)
_VIDEOMAE = HFKind(("videomae",), "mean", None, IMAGENET_MEAN, IMAGENET_STD)
#: CLIP: its pooler output is post_layernorm(class token); its classifier averages the patch tokens unnormed
_CLIP = HFKind(("vision_model",), "cls", "post_layernorm", CLIP_MEAN, CLIP_STD, 1.0, "bicubic")
KINDS: dict[str, HFKind] = {
    "ViTModel": _VIT,
    "ViTForImageClassification": _VIT,
    "Dinov2Model": _DINOV2,
    "Dinov2ForImageClassification": _DINOV2,
    "VideoMAEModel": _VIDEOMAE,
    "VideoMAEForVideoClassification": _VIDEOMAE,
    "CLIPVisionModel": _CLIP,
    "CLIPForImageClassification": HFKind(("vision_model",), "mean_patches", None, CLIP_MEAN, CLIP_STD, 1.0, "bicubic"),
    # SigLIP: its pooler output is the attention-pooling head; its classifier averages the tokens
    "SiglipVisionModel": HFKind(("vision_model",), "head", interpolation="bicubic"),
    # the dual-encoder checkpoints users name (openai/clip-vit-base-patch16, google/siglip-base-patch16-224):
    # their vision tower, pooled as its vision model pools; the text tower is not kept
    "CLIPModel": _CLIP,
    "SiglipModel": HFKind(("vision_model",), "head", interpolation="bicubic"),
    "SiglipForImageClassification": HFKind(("vision_model",), "mean", interpolation="bicubic"),
    "SwinModel": HFKind(("swin",), "mean", None, IMAGENET_MEAN, IMAGENET_STD, 1.0, "bicubic"),
    "SwinForImageClassification": HFKind(("swin",), "mean", None, IMAGENET_MEAN, IMAGENET_STD, 1.0, "bicubic"),
}
#: the final norm a CLIP-like tower applies to its pooled class token, where it has one
_POOL_NORMS = ("post_layernorm", "layernorm", "norm", "layer_norm")


def is_transformers_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.")


def vision_tower(model: nn.Module) -> nn.Module:
    """The module that turns pixels into tokens: a declared tower, a dual encoder's ``vision_model``, a
    classification model's base model, or the model itself."""
    kind = KINDS.get(type(model).__name__)
    for name in kind.tower if kind else ("vision_model",):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


class HFBackbone(nn.Module):
    """A transformers vision model seen through the interface the adapted model uses (``embed_dim``,
    ``forward_features``, ``forward_head`` / ``pool``, ``reset_classifier``, ``pretrained_cfg``)."""

    def __init__(self, model: nn.Module, name: str | None = None, processor: dict[str, Any] | None = None):
        super().__init__()
        self.kind = type(model).__name__
        declared = KINDS.get(self.kind)
        config = getattr(model.config, "vision_config", None) or model.config
        pretrained_fc_norm = getattr(model, "fc_norm", None) if self.kind == "VideoMAEForVideoClassification" else None
        self.model = vision_tower(model)
        takes = getattr(self.model, "main_input_name", "pixel_values")
        if takes != "pixel_values":
            raise AdaptFormerError(f"transformers {self.kind}: not a vision model (its input is {takes})")
        self.final_norm = declared.final_norm if declared else None
        self.video = int(getattr(config, "num_frames", 1) or 1) > 1 or self.kind.startswith("VideoMAE")
        self.embed_dim = _width(config)
        self._masking = _masking_noise(self.model)
        self._patches = "spatial_shapes" in _parameters(self.model)
        if self.video and self.kind.startswith("VideoMAE"):  # mean pooling: tasks train a copy of this norm
            self.fc_norm = pretrained_fc_norm or nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.head = nn.Identity()
        frames = int(getattr(config, "num_frames", 1) or 1) if self.video else 1
        size = (declared.size if declared else None) or _side(getattr(config, "image_size", 224))
        self.img_size, self.num_frames = (size, size), frames  # what families.Family.input_spec reads
        mean, std = _mean_std(declared, config, processor)
        self.pretrained_cfg = {
            "architecture": name or getattr(model.config, "_name_or_path", None) or self.kind,
            "input_size": (3, size, size),
            "mean": mean,
            "std": std,
            "crop_pct": declared.crop_pct if declared else 1.0,
            "interpolation": declared.interpolation if declared else "bicubic",
        }
        self.pooling = declared.pooling if declared else _find_pooling(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._tower_output(x).last_hidden_state
        return getattr(self.model, self.final_norm)(tokens) if self.final_norm else tokens

    def _tower_output(self, x: torch.Tensor):
        pixels = x.permute(0, 2, 1, 3, 4) if self.video else x
        if self._masking:  # MAE-style towers: no masking, tokens kept in their order
            tokens = self.model.embeddings.patch_embeddings.num_patches
            noise = torch.arange(tokens, device=x.device, dtype=x.dtype).expand(len(x), -1)
            return self.model(pixel_values=pixels, noise=noise)
        if self._patches:  # NaFlex towers (SigLIP 2) take patches and the grid each image was cut into
            return self.model(**as_patches(pixels, int(self.model.config.patch_size)))
        return self.model(pixel_values=pixels)

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        if x.ndim == 4 and self.pooling != "pooler":  # (B, C, H, W) feature maps: their spatial mean
            return x.mean(dim=(2, 3))
        if self.pooling == "cls":
            return x[:, 0]
        if self.pooling == "cls_norm":
            return _pool_norm(self.model)(x[:, 0])
        if self.pooling == "mean_patches":
            return x[:, 1:].mean(dim=1)
        if self.pooling == "head":
            return self.model.head(x)
        if self.pooling == "pooler":
            return self.model.pooler(x).flatten(1)
        return x.mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.pool(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if num_classes:
            raise AdaptFormerError("a Hugging Face backbone has no classifier of its own; tasks bring their heads")


def _width(config) -> int:
    for key in ("hidden_size", "embed_dim"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    for key in ("hidden_sizes", "embed_dims"):
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and value:
            return int(value[0])
    raise AdaptFormerError(f"{type(config).__name__}: no hidden_size or embed_dim to size tasks by")


def _side(size) -> int:
    return int(size[-1]) if isinstance(size, (list, tuple)) else int(size)


def _mean_std(declared: HFKind | None, config, processor: dict[str, Any] | None):
    """The processor's own statistics where known (a preprocessor_config.json), else the class's defaults."""
    processor = processor or {}
    if processor.get("image_mean") and processor.get("image_std"):
        return tuple(processor["image_mean"]), tuple(processor["image_std"])
    if declared is not None:
        return declared.mean, declared.std
    return MEAN_STD.get(getattr(config, "model_type", ""), (IMAGENET_MEAN, IMAGENET_STD))


def _parameters(tower: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(tower.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _masking_noise(tower: nn.Module) -> bool:
    """MAE-style towers (ViTMAE) mask a random share of the tokens unless told otherwise: mask none, and pass
    ordered noise so the tokens keep their order."""
    masks = hasattr(getattr(tower, "embeddings", None), "random_masking")
    if masks and "noise" in _parameters(tower) and hasattr(tower.config, "mask_ratio"):
        tower.config.mask_ratio = 0.0
        return True
    return False


def as_patches(pixels: torch.Tensor, patch: int) -> dict[str, torch.Tensor]:
    """Images (B, C, H, W) as a NaFlex tower takes them: each image's patches in rows, (B, N, p*p*C) with the
    channels last within a patch (SigLIP 2's processor), every patch valid, and the (H/p, W/p) grid."""
    b, c, h, w = pixels.shape
    rows, cols = h // patch, w // patch
    patches = pixels[:, :, : rows * patch, : cols * patch].reshape(b, c, rows, patch, cols, patch)
    patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(b, rows * cols, patch * patch * c)
    mask = torch.ones(b, rows * cols, dtype=torch.long, device=pixels.device)
    shapes = torch.tensor([[rows, cols]] * b, dtype=torch.long, device=pixels.device)
    return {"pixel_values": patches, "attention_mask": mask, "spatial_shapes": shapes}


def _pool_norm(tower: nn.Module) -> nn.Module:
    return next(getattr(tower, n) for n in _POOL_NORMS if isinstance(getattr(tower, n, None), nn.Module))


def _find_pooling(backbone: HFBackbone) -> str:
    """How this class pools, found by one probe: which pooling of ``last_hidden_state`` gives its own
    ``pooler_output`` (a ``dense + tanh`` pooler is passed over for the class token; none: class token, else mean)."""
    tower = backbone.model
    has_cls = isinstance(getattr(getattr(tower, "embeddings", None), "cls_token", None), torch.Tensor)
    pooler = getattr(tower, "pooler", None)
    if isinstance(pooler, nn.Module) and any(isinstance(m, nn.Tanh) for m in pooler.modules()):
        return "cls"
    reference = next(iter(tower.parameters()), None)
    if reference is None or reference.is_meta:
        return "cls" if has_cls else "mean"
    size, frames = backbone.img_size[0], backbone.num_frames
    shape = (1, 3, frames, size, size) if backbone.video else (1, 3, size, size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(reference.device, reference.dtype)
    was_training = tower.training
    tower.eval()
    try:
        with torch.no_grad():
            out = backbone._tower_output(x)
            tokens, pooled = out.last_hidden_state, getattr(out, "pooler_output", None)
            if not isinstance(pooled, torch.Tensor):
                return "cls" if has_cls and tokens.ndim == 3 else "mean"
            for mode in ("cls", "cls_norm", "mean", "mean_patches", "head", "pooler"):
                try:
                    backbone.pooling = mode
                    candidate = backbone.pool(tokens)
                except Exception:  # a pooling this class has no part for (no head, no norm)
                    continue
                if candidate.shape == pooled.reshape(len(x), -1).shape and torch.allclose(
                    candidate, pooled.reshape(len(x), -1), atol=1e-5, rtol=1e-4
                ):
                    return mode
    finally:
        tower.train(was_training)
    return "cls" if has_cls else "mean"


def wrap(model: nn.Module, name: str | None = None, processor: dict[str, Any] | None = None) -> HFBackbone:
    return HFBackbone(model, name=name, processor=processor)


def from_pretrained(reference: str, **kwargs: Any) -> HFBackbone:
    """``hf:<folder or hub id>`` -> the wrapped model (its preprocessor_config.json read where the folder has one)."""
    transformers = require("transformers", f"model {reference}")
    AutoConfig, AutoModel = transformers.AutoConfig, transformers.AutoModel  # noqa: N806

    source = reference[len(HF_PREFIX) :]
    try:
        config = AutoConfig.from_pretrained(source)
        model = AutoModel.from_pretrained(source, config=config, **kwargs)
    except (OSError, ValueError) as error:
        raise AdaptFormerError(f"model {reference}: cannot load ({str(error).strip().splitlines()[0][:160]})") from None
    processor_file = Path(source) / "preprocessor_config.json"
    processor = None
    if processor_file.is_file():
        try:
            processor = json.loads(processor_file.read_text())
        except (OSError, ValueError):
            raise AdaptFormerError(f"model {reference}: {processor_file} is not valid JSON") from None
    return wrap(model, name=reference, processor=processor if isinstance(processor, dict) else None)


def wrap_if_hf(model: nn.Module) -> nn.Module:
    return wrap(model) if is_transformers_model(model) else model


def folder_name(path: str | Path) -> str:
    return f"{HF_PREFIX}{path}"
