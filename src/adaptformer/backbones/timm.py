"""Create ViT backbones by name: any timm ViT, a local checkpoint file, or an embedded backbone.

``create_backbone("vit_base_patch16_224", checkpoint="mae_pretrain_vit_base.pth", num_classes=100)``
builds the timm model and loads the file through timm's own ``pretrained_cfg_overlay`` path (so position
embeddings are resampled and EMA weights preferred, as timm does), after reading and normalising the file
ourselves (safe loading, MAE/reference key clean-up). Because timm loads non-strictly when the head changes,
we then check which weights the file really set and fail loudly when backbone weights were left random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import AdaptFormerError, first_line
from .checkpoints import drop_mismatched_head, read_state_dict, to_timm_vit
from .embedded import EMBEDDED, EmbeddedBackbone, get_embedded
from .hf import HF_PREFIX
from .hf import from_pretrained as hf_from_pretrained
from .timm_registry import EMBEDDED_TIMM_NAMES, VIDEOMAE_HUB
from .video import inflate_image_vit, is_video_model
from .video_checkpoints import load_video_weights, read_video_state_dict

ALLOWED_MISSING_PREFIXES = ("head.", "fc_norm.", "head_drop.")


def create_backbone(
    name: str,
    pretrained: bool = True,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm ViT by name. Embedded names (``adaptformer/...``) load their shipped weights when
    ``pretrained``; ``checkpoint`` loads a local file; otherwise ``pretrained`` uses timm's hub download."""
    return _create(name, pretrained, checkpoint, num_classes, timm_kwargs)


def _create_video(
    name: str, pretrained: bool, checkpoint: str | Path | None, num_classes: int | None, kwargs: dict[str, Any]
) -> nn.Module:
    """A registered video ViT through timm (``timm_registry.py``): the Hub's VideoMAE weights when
    ``pretrained``, a local file (VideoMAE or Hugging Face layout) through the same converter when given."""
    if checkpoint is None and pretrained and name not in VIDEOMAE_HUB:
        raise AdaptFormerError(f"model {name}: no public pretraining weights are known; pass --checkpoint FILE")
    load_hub = checkpoint is None and pretrained
    try:
        model = timm.create_model(name, pretrained=load_hub, num_classes=num_classes or 0, **kwargs)
    except TypeError as error:
        raise AdaptFormerError(f"model {name}: {error}") from None
    except (OSError, RuntimeError) as error:  # offline, hub errors: one line, with the way out
        raise AdaptFormerError(
            f"model {name}: cannot fetch {VIDEOMAE_HUB[name]} ({first_line(error, 160)}); pass --checkpoint FILE "
            "(VideoMAE or Hugging Face layout) or --no-pretrained"
        ) from None
    if checkpoint is not None:
        load_video_weights(model, read_video_state_dict(checkpoint), checkpoint)
    return model


def source_name(model: nn.Module) -> str | None:
    """The timm name (with its pretrained tag) a backbone was created as, from timm's own pretrained_cfg."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name, tag = cfg.get("architecture"), cfg.get("tag")
    return f"{name}.{tag}" if name and tag and not name.startswith("adaptformer/") else name


def _create(
    name: str, pretrained: bool, checkpoint: str | Path | None, num_classes: int | None, timm_kwargs: dict[str, Any]
) -> nn.Module:
    if name.startswith(HF_PREFIX):
        if checkpoint is not None or num_classes:
            raise AdaptFormerError(f"model {name}: a Hugging Face model brings its weights; drop --checkpoint")
        return hf_from_pretrained(name, **timm_kwargs)
    if is_video_model(name):
        return _create_video(name, pretrained, checkpoint, num_classes, dict(timm_kwargs))
    if "num_frames" in timm_kwargs:  # an image backbone asked for clips: inflate it (docs: "image backbone on video")
        kwargs = dict(timm_kwargs)
        frames, tubelet = kwargs.pop("num_frames"), kwargs.pop("tubelet_size", 2)
        image = _create(name, pretrained, checkpoint, None, kwargs)
        video = inflate_image_vit(image, frames, tubelet, name=name)
        if num_classes:
            video.reset_classifier(num_classes)
        return video
    embedded = get_embedded(name)
    if embedded is not None:
        return _create_embedded(embedded, pretrained and checkpoint is None, checkpoint, num_classes, timm_kwargs)
    _check_timm_name(name)
    kwargs = dict(timm_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if checkpoint is None:
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except (OSError, RuntimeError) as error:
            raise AdaptFormerError(
                f"model {name}: cannot fetch pretrained weights ({str(error).splitlines()[0]}); "
                "pass --checkpoint FILE or --no-pretrained"
            ) from None
    return _create_from_file(name, Path(checkpoint), kwargs)


def _check_timm_name(name: str) -> None:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5] if name else []
        hint = f" (similar: {', '.join(close)})" if close else ""
        embedded = ", ".join(EMBEDDED)
        raise AdaptFormerError(
            f"model {name!r}: not a timm model, a video model (videomae_*_patch16_224) or an embedded backbone "
            f"({embedded}){hint}"
        )


def _create_from_file(name: str, path: Path, kwargs: dict[str, Any]) -> nn.Module:
    state = to_timm_vit(read_state_dict(path))
    num_classes = kwargs.get("num_classes", timm.get_pretrained_cfg_value(name, "num_classes") or 1000)
    head = state.get("head.weight")
    if head is None or head.shape[0] != num_classes:  # a head for other classes is of no use here
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    # timm loads strictly only when the head is kept; either way _check_all_loaded verifies the result
    kwargs = {**kwargs, "pretrained_strict": False}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = timm.create_model(name, pretrained=False, **kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state), **kwargs)
        except RuntimeError as error:
            raise AdaptFormerError(
                f"checkpoint {path}: does not fit {name} ({str(error).strip().splitlines()[0][:200]})"
            ) from None
    _check_all_loaded(model, reference, path, name)
    return model


def _check_all_loaded(model: nn.Module, reference: nn.Module, path: Path, name: str) -> None:
    """timm's non-strict load only logs unknown keys. Both models were built from the same seed, so a
    randomly initialised weight that is still bit-equal to its twin was not provided by the file (constant
    inits such as zero biases or unit LayerNorm scales cannot be told apart this way and are skipped)."""
    ref = dict(reference.named_parameters())
    untouched = [
        k
        for k, p in model.named_parameters()
        if not k.startswith(ALLOWED_MISSING_PREFIXES) and _is_random(ref[k]) and torch.equal(p, ref[k])
    ]
    if untouched:
        listed = ", ".join(untouched[:3]) + (f" and {len(untouched) - 3} more" if len(untouched) > 3 else "")
        raise AdaptFormerError(
            f"checkpoint {path}: does not provide {len(untouched)} weights of {name} ({listed}); "
            "is it a ViT checkpoint of this architecture?"
        )


def _is_random(tensor: torch.Tensor) -> bool:
    return tensor.numel() > 1 and bool((tensor != tensor.flatten()[0]).any())


def _create_embedded(
    entry: EmbeddedBackbone,
    pretrained: bool,
    checkpoint: str | Path | None,
    num_classes: int | None,
    timm_kwargs: dict[str, Any],
) -> nn.Module:
    kwargs = dict(timm_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    path = Path(checkpoint) if checkpoint is not None else entry.weights_path()
    if pretrained and not path.is_file():
        raise AdaptFormerError(
            f"model {entry.name}: weights {path} are not installed; reinstall adaptformer or run `adaptformer pretrain`"
        )
    # the packaged weights through timm's registry (its ViT filter resamples position embeddings at other sizes)
    model = timm.create_model(EMBEDDED_TIMM_NAMES[entry.name], pretrained=pretrained, **kwargs)
    model.pretrained_cfg = {**model.pretrained_cfg, "architecture": entry.name, "tag": None}  # what files record
    if checkpoint is not None:
        state = load_file(str(path)) if path.suffix == ".safetensors" else read_state_dict(path)
        load_backbone_weights(model, state, path)
    return model


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load of everything but a head whose class count differs; position embeddings are resampled
    (timm's filter) when the model runs at another image size than the weights were trained at."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = drop_mismatched_head(checkpoint_filter_fn(state, model), model.state_dict())
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(ALLOWED_MISSING_PREFIXES)]
    if missing or unexpected:
        raise AdaptFormerError(
            f"checkpoint {path}: keys do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
