"""An exported task folder, run as a user would run it elsewhere: ``predict --onnx DIR`` (onnxruntime) or
``predict --exported DIR`` (whichever format the folder holds), with the preprocessing recorded beside the
program and the answers the task bank gives (top-k, and labels over the threshold for a multi-label task)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.transforms import InputSpec
from ..errors import AdaptFormerError
from ..media import Clip, image_tensor
from ..objectives import DEFAULT_THRESHOLD, Objective, get_objective
from .formats import FORMATS, INPUT, load_program


@dataclass
class ExportedTask:
    directory: Path
    format: str
    spec: InputSpec
    classes: list[str]
    objective: Objective
    name: str
    run: Any  # numpy pixels -> [logits, probabilities]

    @classmethod
    def open(cls, directory: str | Path, want: str | None = None) -> ExportedTask:
        """The folder ``adaptformer export`` wrote; ``want``: the format it must hold (``--onnx``)."""
        directory = Path(directory)
        manifest = _json(directory / "export.json", dict)
        spec = _spec(directory / "preprocessing.json")
        classes = _json(directory / "labels.json", list)
        format = manifest.get("format")
        if format not in FORMATS:
            raise AdaptFormerError(
                f"{directory / 'export.json'}: format {format!r}: expected one of {', '.join(FORMATS)}"
            )
        if want is not None and format != want:
            raise AdaptFormerError(f"{directory}: holds a {format} program ({FORMATS[format]}), not {want}")
        program = directory / FORMATS[format]
        if not program.is_file():
            raise AdaptFormerError(f"{program}: no such file (export.json names a {format} program)")
        objective = get_objective(manifest.get("objective"))
        return cls(directory, format, spec, [str(c) for c in classes], objective, str(manifest.get("task") or
                   directory.name), load_program(program, format, "predict --onnx"))  # fmt: skip

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[1:] != torch.Size(self.spec.sample_shape):
            shape = ", ".join(map(str, self.spec.sample_shape))
            raise AdaptFormerError(
                f"{self.directory}: the program takes {INPUT} of shape (batch, {shape}), got {tuple(pixels.shape)}"
            )
        logits, _ = self.run(pixels.float().numpy())
        return torch.from_numpy(np.asarray(logits))

    def predict(
        self, media: list[Image.Image | Clip], top_k: int = 5, threshold: float = DEFAULT_THRESHOLD
    ) -> list[dict[str, Any]]:
        """One answer per input, as the task bank answers: ``{"index", "task", "top_k", ...}``, or ``{"index",
        "error"}`` for an input of the other kind (a clip for an image task) or an unreadable clip."""
        rows, answers = [], []
        for index, item in enumerate(media):
            try:
                rows.append(
                    (index, item.tensor(self.spec) if isinstance(item, Clip) else image_tensor(item, self.spec))
                )
            except AdaptFormerError as error:
                answers.append({"index": index, "error": str(error)})
        if rows:
            logits = self.logits(torch.stack([tensor for _, tensor in rows]))
            answers += [
                {"index": index, "task": self.name, **self.objective.answer(values, self.classes, top_k, threshold)}
                for (index, _), values in zip(rows, logits, strict=True)
            ]
        return sorted(answers, key=lambda row: row["index"])


def _json(path: Path, kind: type):
    if not path.is_file():
        raise AdaptFormerError(f"{path}: no such file (not a folder written by adaptformer export?)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdaptFormerError(f"{path}: not readable JSON ({type(error).__name__})") from None
    if not isinstance(data, kind):
        raise AdaptFormerError(f"{path}: expected a JSON {'object' if kind is dict else 'list'}")
    return data


def _spec(path: Path) -> InputSpec:
    data = _json(path, dict)
    try:
        spec = InputSpec.from_dict(data)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise AdaptFormerError(f"{path}: not a preprocessing record ({type(error).__name__}: {error})") from None
    if spec.size < 1 or spec.frames < 1 or len(spec.mean) != 3 or len(spec.std) != 3 or min(spec.std) <= 0:
        raise AdaptFormerError(f"{path}: size, frames, mean and std are out of range")
    return spec
