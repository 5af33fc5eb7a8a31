"""Task files: the few MB one task trains, saved apart from the backbone they adapt.

A task is ``<name>.safetensors`` holding only the tuned tensors (adapters, prompts, head incl. its BatchNorm
statistics, trainable norms) with the task's description embedded in the safetensors metadata, plus a
``<name>.json`` copy of that description for people and tools. Loading reads the embedded copy (it travels with
the weights) and checks: the format, the backbone fingerprint (a hash of the frozen weights, so a task trained
on other pretrained weights is refused), the exact key set and every shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .adapters.freeze import _is_under
from .adapters.methods import AdaptConfig, adapt, adapt_config_of, tuned_prefixes
from .backbones.checkpoints import read_state_dict
from .errors import AdaptFormerError
from .utils.atomic import atomic_write, atomic_write_json
from .utils.hashing import hash_tensors

FORMAT = "adaptformer.task"
FORMAT_VERSION = 1
METADATA_KEY = "adaptformer"


def tuned_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (e.g. the head's BatchNorm statistics) under the tuned prefixes."""
    tuned = tuned_prefixes(model)
    return {k: v for k, v in model.state_dict().items() if _is_under(k, tuned)}


def backbone_fingerprint(model: nn.Module) -> str | None:
    """SHA-256 over the frozen tensors (names, shapes, dtypes, bytes); None when nothing is frozen."""
    tuned = tuned_prefixes(model)
    if tuned == [""]:
        return None
    frozen = ((k, v) for k, v in sorted(model.state_dict().items()) if not _is_under(k, tuned))
    return hash_tensors(frozen)[:32]


def backbone_name(model: nn.Module) -> str | None:
    created = getattr(model, "adaptformer_backbone", None)
    if created:
        return created["name"]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture")


def task_metadata(
    model: nn.Module,
    classes: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """The description stored with a task; ``fingerprint`` may be passed when already known (frozen weights do
    not change while training, so the loop hashes them once)."""
    config = adapt_config_of(model)
    data_cfg = getattr(model, "pretrained_cfg", None) or {}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adaptformer_version": __version__,
        "config": config.to_dict(),
        "num_classes": int(model.num_classes),
        "classes": list(classes) if classes is not None else None,
        "backbone": {
            "name": backbone_name(model),
            "timm_kwargs": getattr(model, "adaptformer_backbone", {}).get("timm_kwargs", {}),
            "checkpoint": getattr(model, "adaptformer_backbone", {}).get("checkpoint"),
            "fingerprint": fingerprint or backbone_fingerprint(model),
            "embed_dim": int(model.embed_dim),
            "depth": len(model.blocks),
            "input_size": list(data_cfg.get("input_size", ())),
            "mean": list(data_cfg.get("mean", ())),
            "std": list(data_cfg.get("std", ())),
        },
        "extra": extra or {},
    }


def save_task(
    model: nn.Module,
    path: str | Path,
    classes: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    fingerprint: str | None = None,
) -> Path:
    """Write ``path`` (.safetensors, atomically) and its ``.json`` description; returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(path.suffix + ".safetensors") if path.suffix else path.with_suffix(".safetensors")
    if classes is not None and len(classes) != model.num_classes:
        raise AdaptFormerError(f"classes: {len(classes)} names given for a {model.num_classes}-class head")
    meta = task_metadata(model, classes, extra, fingerprint)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tuned_state_dict(model).items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)}))
    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def read_task(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Metadata and tensors of a task file, with a one-line error for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise AdaptFormerError(f"task file {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    except (SafetensorError, OSError, ValueError) as error:
        raise AdaptFormerError(f"task file {path}: not a readable safetensors file ({error})") from None
    if raw is None:
        raise AdaptFormerError(f"task file {path}: no adaptformer metadata (not written by save_task)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise AdaptFormerError(f"task file {path}: its metadata is not valid JSON") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise AdaptFormerError(
            f"task file {path}: format {meta.get('format')} v{meta.get('format_version')}, "
            f"expected {FORMAT} v{FORMAT_VERSION}"
        )
    return meta, tensors


def apply_task(model: nn.Module, path: str | Path, check_backbone: bool = True) -> nn.Module:
    """Adapt a fresh backbone as the task file says and load its tensors, strictly."""
    meta, tensors = read_task(path)
    config = AdaptConfig.from_dict(meta["config"])
    existing = getattr(model, "adaptformer_config", None)
    if existing is not None:
        if existing != config:
            raise AdaptFormerError(
                f"task file {path}: trained with method {config.method} ({_describe(config)}), but the model is "
                f"adapted with {existing.method} ({_describe(existing)})"
            )
        if model.num_classes != meta["num_classes"]:
            raise AdaptFormerError(
                f"task file {path}: has {meta['num_classes']} classes, the model's head has {model.num_classes}"
            )
    else:
        _check_architecture(model, meta, path)
        adapt(model, config=config, num_classes=meta["num_classes"])
    expected = meta["backbone"]["fingerprint"]
    if check_backbone and expected is not None and backbone_fingerprint(model) != expected:
        source = meta["backbone"].get("checkpoint")
        weights = f"{meta['backbone']['name']}" + (f" from {source}" if source else "")
        raise AdaptFormerError(
            f"task file {path}: trained on other backbone weights ({weights}, fingerprint {expected}); load it "
            "onto those (--checkpoint) or pass check_backbone=False / --no-check-backbone"
        )
    load_tuned_tensors(model, tensors, path)
    model.task_metadata = meta
    return model


def _describe(config: AdaptConfig) -> str:
    d = config.to_dict()
    return ", ".join(f"{k}={d[k]}" for k in ("bottleneck", "placement", "layers", "vpt_tokens", "vpt_mode"))


def _check_architecture(model: nn.Module, meta: dict[str, Any], path: str | Path) -> None:
    want = meta["backbone"]
    have = {"embed_dim": int(getattr(model, "embed_dim", -1)), "depth": len(getattr(model, "blocks", []))}
    if (want["embed_dim"], want["depth"]) != (have["embed_dim"], have["depth"]):
        raise AdaptFormerError(
            f"task file {path}: made for {want['name']} (width {want['embed_dim']}, depth {want['depth']}), "
            f"the model has width {have['embed_dim']}, depth {have['depth']}"
        )


def load_tuned_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Copy ``tensors`` into the tuned part of ``model``: the key sets must be equal, every shape must match."""
    own = tuned_state_dict(model)
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise AdaptFormerError(
            f"{path}: tensors do not match the adapted model (missing {missing[:3]}{'…' if len(missing) > 3 else ''}"
            f", unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''})"
        )
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if tensors[k].shape != v.shape
    ]
    if wrong:
        raise AdaptFormerError(f"{path}: shape mismatch: {'; '.join(wrong[:3])}")
    model.load_state_dict(tensors, strict=False)


def load_task(
    path: str | Path,
    backbone: nn.Module | None = None,
    pretrained: bool = True,
    checkpoint: str | Path | None = None,
    check_backbone: bool = True,
) -> nn.Module:
    """A ready model for a task file: the recorded backbone (or ``backbone``) with the task applied."""
    if backbone is None:
        from .backbones.timm import create_backbone

        meta, _ = read_task(path)
        name = meta["backbone"]["name"]
        if not name:
            raise AdaptFormerError(f"task file {path}: records no backbone name; pass the backbone explicitly")
        backbone = create_backbone(
            name, pretrained=pretrained, checkpoint=checkpoint, **meta["backbone"].get("timm_kwargs", {})
        )
    return apply_task(backbone, path, check_backbone=check_backbone)


def import_reference_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Load the tuned keys of a reference AdaptFormer checkpoint (``{'model': state_dict}`` with
    ``blocks.N.adaptmlp.*``, ``head.*``, ``embeddings.N``) into an adapted model; everything else in the file
    (its backbone copy, optimizer state) is ignored. Returns the keys loaded."""
    state = read_state_dict(path)
    own = tuned_state_dict(model)
    kept = {k: v for k, v in state.items() if k in own}
    load_tuned_tensors(model, kept, path)
    return sorted(kept)
