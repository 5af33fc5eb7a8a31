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
import threading
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file

from ..errors import AdaptFormerError
from ..methods.base import MethodConfig
from ..methods.registry import get_method, method_config_from_dict, option_names
from ..objectives import get_objective
from ..utils.atomic import atomic_write, atomic_write_json
from ..utils.options import is_int

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
TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip

#: a safetensors header larger than this is refused before it is read (the format's own limit is 100 MB)
MAX_HEADER_BYTES = 100_000_000


class TensorEntry(NamedTuple):
    """One tensor of a safetensors header: its dtype, shape, and byte range in the data that follows the header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class FileStamp:
    """One version of a file: its size, modification time and a hash of its header. A file whose stamp differs
    from the one taken when it was listed has changed on disk since."""

    size: int
    mtime_ns: int
    digest: bytes


@dataclass(frozen=True)
class TaskHeader:
    """What a task file says about itself, read from its safetensors header alone (no tensor is read).

    ``tensors`` is read-only and shared between files whose tensor tables are the same (every file of one
    method, width and class count): ten thousand such files hold one table, and each is checked once."""

    path: Path
    meta: dict[str, Any]
    tensors: Mapping[str, TensorEntry]
    stamp: FileStamp

    @property
    def size(self) -> int:
        return self.stamp.size

    @property
    def tensor_bytes(self) -> int:
        """Bytes of the tensors (what the task costs in memory once loaded, at the file's precision)."""
        return sum(entry.end - entry.begin for entry in self.tensors.values())


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


def _header_from_bytes(path: Path, raw: bytes | memoryview, size: int, mtime_ns: int) -> TaskHeader:
    try:
        header = json.loads(bytes(raw))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdaptFormerError(f"task file {path}: not a readable safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise AdaptFormerError(f"task file {path}: not a readable safetensors file (header is not a mapping)")
    metadata = header.pop("__metadata__", None) or {}
    tensors = _TENSOR_TABLES.checked(path, header, size - 8 - len(raw))  # data: every tensor's bytes
    meta = _description(path, metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None)
    stamp = FileStamp(size, mtime_ns, hashlib.blake2b(raw, digest_size=16).digest())
    return TaskHeader(path, meta, tensors, stamp)


class _TensorTables:
    """Tensor tables already checked, by a hash of their JSON text and the data size they were checked against
    (a bounded LRU). A directory of ten thousand files of one kind checks its table once; every other file costs one
    ``json.dumps`` and a lookup instead of a pass over its tensors."""

    #: tables longer than this (JSON characters) are checked every time and not kept (a hostile directory of
    #: huge headers must not fill memory with them)
    MAX_KEPT_CHARS = 1_000_000

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._tables: OrderedDict[tuple[bytes, int], Mapping[str, TensorEntry]] = OrderedDict()
        self._lock = threading.Lock()  # listing (model thread) and prefetch (I/O thread) both read headers

    def checked(self, path: Path, header: dict[str, Any], data_bytes: int) -> Mapping[str, TensorEntry]:
        text = json.dumps(header, separators=(",", ":"))
        key = (hashlib.blake2b(text.encode(), digest_size=16).digest(), data_bytes)
        if len(text) > self.MAX_KEPT_CHARS:
            key = None
        with self._lock:
            table = self._tables.get(key) if key is not None else None
            if table is not None:
                self._tables.move_to_end(key)
                return table
        table = MappingProxyType({k: _tensor_entry(path, k, entry, data_bytes) for k, entry in header.items()})
        if key is not None:
            with self._lock:
                self._tables[key] = table
                while len(self._tables) > self.capacity:
                    self._tables.popitem(last=False)
        return table


_TENSOR_TABLES = _TensorTables()


def _tensor_entry(path: Path, key: str, entry: Any, data_bytes: int) -> TensorEntry:
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
    if not isinstance(shape, list) or not all(is_int(n, 0) for n in shape):
        raise AdaptFormerError(f"{where}: shape {str(shape)[:40]}: expected a list of non-negative integers)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(n, 0) for n in offsets)):
        raise AdaptFormerError(f"{where}: data_offsets: expected two non-negative integers)")
    begin, end = offsets
    if not begin <= end <= data_bytes or end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise AdaptFormerError(f"{where}: its data_offsets do not hold its shape inside the file)")
    return TensorEntry(dtype, tuple(shape), begin, end)


def read_task_file(path: str | Path, expected: FileStamp | None = None) -> tuple[TaskHeader, dict[str, torch.Tensor]]:
    """Header and tensors of a task file, read with one ``readinto`` into one buffer: the header is parsed from
    it and every tensor is a view of it (one copy from the page cache, none after). With ``expected`` (the stamp
    taken when the file was listed), a file that changed on disk since is refused instead of mixing versions.

    Not ``mmap``: it would save no copy here (each tensor must own its memory once the file may change), and a
    mapped file truncated in place while it is read kills the process with SIGBUS, where a short read is a
    one-line error."""
    path = Path(path)
    with _opened(path) as handle:
        stat = os.fstat(handle.fileno())
        buffer = bytearray(stat.st_size)
        complete = handle.readinto(buffer) == stat.st_size and not handle.read(1)
    if not complete:
        raise AdaptFormerError(f"task file {path}: changed on disk while it was read; try again")
    length = _header_length(path, buffer[:8], len(buffer))
    view = memoryview(buffer)
    header = _header_from_bytes(path, view[8 : 8 + length], len(buffer), stat.st_mtime_ns)
    if expected is not None and header.stamp != expected:
        raise AdaptFormerError(
            f"task file {path}: changed on disk since it was listed; refresh the bank (bank.refresh(), or "
            "POST /tasks/refresh on a server) to list the new version"
        )
    start = 8 + length
    return header, {key: _tensor_view(buffer, start, entry) for key, entry in header.tensors.items()}


def _tensor_view(buffer: bytearray, start: int, entry: TensorEntry) -> torch.Tensor:
    """A tensor over its bytes in ``buffer`` (checked to lie inside it when the header was read); a copy where
    the bytes are not aligned for the dtype."""
    dtype = TORCH_DTYPES[entry.dtype]
    count = math.prod(entry.shape)
    if count == 0:
        return torch.empty(entry.shape, dtype=dtype)
    offset = start + entry.begin
    flat = torch.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    if offset % DTYPE_BYTES[entry.dtype]:
        flat = flat.clone()
    return flat.view(entry.shape)


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
    method_config_of(meta, path)


def method_config_of(meta: dict[str, Any], path: str | Path) -> MethodConfig:
    """The typed method config of a checked description. Parsed once per distinct ``method`` section and shared
    (frozen): listing, checking, loading and preprocessing ask again for free, and ten thousand files trained
    with the same options hold one config."""
    try:
        return _config_from_json(json.dumps(meta["method"], sort_keys=True))
    except AdaptFormerError as error:
        raise AdaptFormerError(f"task file {path}: method: {error}") from None


@lru_cache(maxsize=4096)
def _config_from_json(text: str) -> MethodConfig:
    return method_config_from_dict(json.loads(text))


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
