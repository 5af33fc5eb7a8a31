"""Training state for ``--resume``: tuned weights, optimizer, schedule, scaler, RNG states and position.

Only the tuned tensors are stored (the frozen backbone is re-created from its name and checked by
fingerprint), so a checkpoint of an adapter run is a few MB. The file is written atomically: a kill at any
moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AdaptFormerError
from ..utils.atomic import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, **state: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: Path) -> dict[str, Any]:
    """Read our own checkpoint; RNG states hold numpy/python objects, so allow exactly those."""
    try:
        with torch.serialization.safe_globals(_rng_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torn or foreign file
        raise AdaptFormerError(f"--resume: cannot read {path} ({str(error).splitlines()[0][:160]})") from None


def _rng_globals() -> list:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray

    dtype_classes = [type(np.dtype(t)) for t in ("uint32", "float64", "int64")]
    return [np.ndarray, np.dtype, multiarray._reconstruct, *dtype_classes, tuple]
