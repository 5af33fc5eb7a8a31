"""Which device a process runs on."""

from __future__ import annotations

import torch

from ..errors import AdaptFormerError


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` (this rank's GPU) or ``cuda:N``."""
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = parse_device(f"cuda:{local_rank}" if preference == "cuda" else preference, preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AdaptFormerError(f"--device {preference}: CUDA is not available on this machine")
    return device


def parse_device(name: str, given: str | None = None) -> torch.device:
    """``name`` as a torch device, or a one-line error (checked when options are read, before any work)."""
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise AdaptFormerError(f"--device: expected auto, cpu, cuda or cuda:N, got {given or name!r}") from None
