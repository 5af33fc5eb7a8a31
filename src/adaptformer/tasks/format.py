"""The task file format: ``<name>.safetensors`` (tensors + JSON description in its metadata) and a ``.json`` copy.

Version 2 (written now)::

    {"format": "adaptformer.task", "format_version": 2, "adaptformer_version": "...",
     "task": "cifar100",                                   # the task's name in a model or bank
     "method": {"method": "adaptformer", "bottleneck": 64, ...},   # the method config, every field
     "classes": [...], "num_classes": 100,
     "objective": "classification",                        # or "multilabel" (absent: classification)
     "backbone": {"family": "timm", "name": "vit_base_patch16_224.mae", "kwargs": {...}, "checkpoint": "...",
                  "fingerprint": "<sha256 of the frozen backbone, 32 hex>", "embed_dim": 768, "depth": 12,
                  "class": "VisionTransformer",                   # the backbone's class (absent: not checked)
                  "adapter_input": "residual", "anatomy": "<16 hex>"},  # what discovery found (absent: not checked)
     "preprocessing": {"modality": "image", "input_size": [3, 224, 224], "frames": 1, "interpolation": "bicubic",
                       "crop_pct": 0.875, "resize": 256, "mean": [...], "std": [...]},
     "extra": {"dataset": ..., "epoch": ..., "top1": ...}}

Tensor keys are the reference implementation's (``blocks.{i}.adaptmlp.*``, ``embeddings.{i}``, ``fc_norm.*``,
``head.*``; a full fine-tuning task adds the backbone's timm keys). Version 1 files (no task name, method
options mixed in one ``config``, no crop or interpolation) are read and upgraded in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from ..errors import AdaptFormerError
from ..methods.registry import get_method, method_config_from_dict, option_names
from ..objectives import get_objective
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


#: bytes per element of every safetensors dtype
DTYPE_BYTES = {
    **dict.fromkeys(("F64", "I64", "U64"), 8),
    **dict.fromkeys(("F32", "I32", "U32"), 4),
    **dict.fromkeys(("F16", "BF16", "I16", "U16"), 2),
    **dict.fromkeys(("I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"), 1),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

#: a safetensors header larger than this is refused before it is read (the format's own limit is 100 MB)
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TaskHeader:
    """What a task file says about itself, read from its safetensors header alone (no tensor is read).

    ``size``/``mtime_ns`` are the file's when it was read and ``digest`` hashes the header bytes: together they
    tell whether the file changed on disk since (``changed_since``)."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name -> (safetensors dtype, shape)
    size: int
    mtime_ns: int
    digest: str

    @property
    def tensor_bytes(self) -> int:
        """Bytes of the tensors (what the task costs in memory once loaded, at the file's precision)."""
        return sum(DTYPE_BYTES[dtype] * math.prod(shape) for dtype, shape in self.tensors.values())

    def changed_since(self, other: TaskHeader) -> bool:
        return (self.size, self.mtime_ns, self.digest) != (other.size, other.mtime_ns, other.digest)


def read_task_header(path: str | Path) -> TaskHeader:
    """The description (version 2) and tensor list of a task file from its header only; one-line errors."""
    path = Path(path)
    with _opened(path) as handle:
        stat = os.fstat(handle.fileno())
        length = _header_length(path, handle.read(8), stat.st_size)
        raw = handle.read(length)
    return _header_from_bytes(path, raw, stat.st_size, stat.st_mtime_ns)


@contextmanager
def _opened(path: Path):
    """``open(path, "rb")`` with a one-line error naming the file."""
    try:
        with open(path, "rb") as handle:
            yield handle
    except FileNotFoundError:
        raise AdaptFormerError(f"task file {path}: no such file") from None
    except OSError as error:
        raise AdaptFormerError(f"task file {path}: cannot be read ({type(error).__name__})") from None


def _header_length(path: Path, prefix: bytes, size: int) -> int:
    """The header length a safetensors file's first 8 bytes claim, refused unless it fits the file."""
    length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
    if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
        raise AdaptFormerError(f"task file {path}: not a readable safetensors file (bad header length)")
    return length


def _header_from_bytes(path: Path, raw: bytes, size: int, mtime_ns: int) -> TaskHeader:
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdaptFormerError(f"task file {path}: not a readable safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise AdaptFormerError(f"task file {path}: not a readable safetensors file (header is not a mapping)")
    metadata = header.pop("__metadata__", None) or {}
    data_bytes = size - 8 - len(raw)  # what follows the header: every tensor's bytes
    tensors = {key: _tensor_entry(path, key, entry, data_bytes) for key, entry in header.items()}
    meta = _description(path, metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None)
    digest = hashlib.sha256(raw).hexdigest()
    return TaskHeader(path, meta, tensors, size, mtime_ns, digest)


def _tensor_entry(path: Path, key: str, entry: Any, data_bytes: int) -> tuple[str, tuple[int, ...]]:
    """One tensor of the header, checked as safetensors would check it before any is read: a known dtype, a
    shape of non-negative integers, and byte offsets inside the file that hold exactly that many elements (a
    header that is valid JSON but wrong inside is refused here, when the file is listed, not when a request
    reaches it)."""
    where = f"task file {path}: not a readable safetensors file (tensor {str(key)[:80]!r}"
    if not isinstance(entry, dict):
        raise AdaptFormerError(f"{where}: expected a mapping)")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise AdaptFormerError(f"{where}: dtype {str(dtype)[:20]!r} is not a safetensors dtype)")
    if not isinstance(shape, list) or not all(_natural(n) for n in shape):
        raise AdaptFormerError(f"{where}: shape {str(shape)[:40]}: expected a list of non-negative integers)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_natural(n) for n in offsets)):
        raise AdaptFormerError(f"{where}: data_offsets: expected two non-negative integers)")
    begin, end = offsets
    if not begin <= end <= data_bytes or end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise AdaptFormerError(f"{where}: its data_offsets do not hold its shape inside the file)")
    return dtype, tuple(shape)


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_task_file(path: str | Path, expected: TaskHeader | None = None) -> tuple[TaskHeader, dict[str, torch.Tensor]]:
    """Header and tensors of a task file, the file read once. With ``expected`` (the header read when the file
    was listed), a file that changed on disk since is refused instead of mixing versions."""
    path = Path(path)
    with _opened(path) as handle:
        stat = os.fstat(handle.fileno())
        data = handle.read()
    length = _header_length(path, data[:8], len(data))
    header = _header_from_bytes(path, data[8 : 8 + length], len(data), stat.st_mtime_ns)
    if expected is not None and header.changed_since(expected):
        raise AdaptFormerError(
            f"task file {path}: changed on disk since it was listed; refresh the bank (bank.refresh(), or "
            "POST /tasks/refresh on a server) to list the new version"
        )
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise AdaptFormerError(f"task file {path}: not a readable safetensors file ({error})") from None
    return header, tensors


def read_task(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The (version 2) description and the tensors of a task file; a one-line error for anything else."""
    header, tensors = read_task_file(path)
    return header.meta, tensors


def _description(path: Path, raw: str | None) -> dict[str, Any]:
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
    return meta


def check_description(meta: dict[str, Any], path: Path) -> None:
    """The fields every reader relies on have the right types (a hand-edited or hostile file is refused here,
    not deep inside model building)."""
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise AdaptFormerError(f"task file {path}: classes: expected a non-empty list of class names")
    if meta.get("num_classes", len(classes)) != len(classes):
        raise AdaptFormerError(f"task file {path}: num_classes {meta['num_classes']} but {len(classes)} class names")
    try:
        get_objective(meta.get("objective"))
    except AdaptFormerError as error:
        raise AdaptFormerError(f"task file {path}: {error}") from None
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
