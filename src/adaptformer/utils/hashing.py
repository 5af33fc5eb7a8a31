"""Stable hashes of tensors (fingerprints of weights)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


def hash_tensors(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over names, shapes, dtypes and raw bytes, in the order given."""
    digest = hashlib.sha256()
    for name, tensor in items:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
