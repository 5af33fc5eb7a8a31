"""What an exported program is: its formats and file names, its input and outputs, and how to run one (ONNX
through onnxruntime on the CPU, a ``torch.export`` program through ``torch.export.load``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import AdaptFormerError
from ..utils.extras import require

FORMATS = {"onnx": "model.onnx", "torch-export": "model.pt2"}
INPUT = "pixel_values"
OUTPUTS = ("logits", "probabilities")


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def load_program(path: Path, format: str, feature: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A function from float32 pixels to ``[logits, probabilities]``; a damaged or foreign file is one line."""
    if format == "onnx":
        onnxruntime = require("onnxruntime", feature)
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - whatever onnxruntime says of a bad file
            raise AdaptFormerError(f"{path}: not a readable ONNX program ({type(error).__name__})") from None
        return lambda pixels: session.run(list(OUTPUTS), {INPUT: pixels.astype(np.float32)})
    try:
        with _quiet("torch.export"):  # it logs a traceback of its own before raising on a damaged file
            module = torch.export.load(str(path)).module()
    except Exception as error:  # noqa: BLE001
        raise AdaptFormerError(f"{path}: not a readable torch.export program ({type(error).__name__})") from None

    def run(pixels: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in module(torch.from_numpy(pixels.astype(np.float32)))]

    return run
