"""The task file format: ``<name>.safetensors`` (tensors + JSON description in its metadata) and a ``.json`` copy.

Version 2 (written now)::

    {"format": "adaptformer.task", "format_version": 2, "adaptformer_version": "...",
     "task": "cifar100",                                   # the task's name in a model or bank
     "method": {"method": "adaptformer", "bottleneck": 64, ...},   # the method config, every field
     "classes": [...], "num_classes": 100,
     "backbone": {"family": "timm", "name": "vit_base_patch16_224.mae", "kwargs": {...}, "checkpoint": "...",
                  "fingerprint": "<sha256 of the frozen backbone, 32 hex>", "embed_dim": 768, "depth": 12},
     "preprocessing": {"modality": "image", "input_size": [3, 224, 224], "frames": 1, "interpolation": "bicubic",
                       "crop_pct": 0.875, "resize": 256, "mean": [...], "std": [...]},
     "extra": {"dataset": ..., "epoch": ..., "top1": ...}}

Tensor keys are the reference implementation's (``blocks.{i}.adaptmlp.*``, ``embeddings.{i}``, ``fc_norm.*``,
``head.*``; a full fine-tuning task adds the backbone's timm keys). Version 1 files (no task name, method
options mixed in one ``config``, no crop or interpolation) are read and upgraded in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import AdaptFormerError
from ..methods.registry import get_method, method_config_from_dict, option_names
from ..utils.atomic import atomic_write, atomic_write_json

FORMAT = "adaptformer.task"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
METADATA_KEY = "adaptformer"


def task_path(path: str | Path) -> Path:
    """``name`` -> ``name.safetensors`` (a task file always has that suffix)."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else Path(f"{path}.safetensors")


def write_task(path: str | Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write the weights atomically, then the ``.json`` copy of the description; returns the weights path."""
    path = task_path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)}))
    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def read_task(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The (version 2) description and the tensors of a task file; a one-line error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise AdaptFormerError(f"task file {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a safetensors handle)
    except (SafetensorError, OSError, ValueError) as error:
        raise AdaptFormerError(f"task file {path}: not a readable safetensors file ({error})") from None
    if raw is None:
        raise AdaptFormerError(f"task file {path}: no adaptformer metadata (not written by save_task)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise AdaptFormerError(f"task file {path}: its metadata is not valid JSON") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT
        or meta.get("format_version") not in READABLE_VERSIONS
    ):
        found = f"{meta.get('format')} v{meta.get('format_version')}" if isinstance(meta, dict) else "no format"
        raise AdaptFormerError(f"task file {path}: format {found}, expected {FORMAT} v1 or v2")
    try:
        if meta["format_version"] == 1:
            meta = upgrade_v1(meta, path)
        check_description(meta, path)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise AdaptFormerError(f"task file {path}: malformed description ({type(error).__name__}: {error})") from None
    return meta, tensors


def check_description(meta: dict[str, Any], path: Path) -> None:
    """The fields every reader relies on have the right types (a hand-edited or hostile file is refused here,
    not deep inside model building)."""
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise AdaptFormerError(f"task file {path}: classes: expected a non-empty list of class names")
    if meta.get("num_classes", len(classes)) != len(classes):
        raise AdaptFormerError(f"task file {path}: num_classes {meta['num_classes']} but {len(classes)} class names")
    for section in ("method", "backbone"):
        if not isinstance(meta.get(section), dict):
            raise AdaptFormerError(f"task file {path}: {section}: expected a mapping")
    try:
        method_config_from_dict(meta["method"])
    except AdaptFormerError as error:
        raise AdaptFormerError(f"task file {path}: method: {error}") from None


def upgrade_v1(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """A version 1 description as version 2 (preprocessing keeps what v1 recorded: size, mean, std)."""
    config = dict(meta["config"])
    method = config.get("method", "adaptformer")
    get_method(method)
    known = set(option_names(method))
    backbone = meta["backbone"]
    classes = meta.get("classes") or [str(i) for i in range(meta["num_classes"])]
    preprocessing = {k: backbone[k] for k in ("input_size", "mean", "std") if backbone.get(k)}
    return {
        "format": FORMAT,
        "format_version": 2,
        "adaptformer_version": meta.get("adaptformer_version"),
        "task": path.stem,
        "method": {"method": method, **{k: v for k, v in config.items() if k in known}},
        "classes": classes,
        "num_classes": len(classes),
        "backbone": {
            "family": "timm",
            "name": backbone.get("name"),
            "kwargs": backbone.get("timm_kwargs") or {},
            "checkpoint": backbone.get("checkpoint"),
            "fingerprint": backbone.get("fingerprint"),
            "embed_dim": backbone["embed_dim"],
            "depth": backbone["depth"],
        },
        "preprocessing": preprocessing or None,
        "extra": meta.get("extra") or {},
        "upgraded_from": 1,
    }
