"""One task as one program: ``adaptformer export TASK --format onnx|torch-export --out DIR``.

The program takes preprocessed pixels (``pixel_values``: float32 ``(batch, 3, H, W)``, or ``(batch, 3, T, H, W)``
for a video task; the batch is dynamic) and returns ``logits`` and ``probabilities`` (softmax, or a sigmoid per
class for a multi-label task): the frozen backbone with the task's adapters, prompts and head, traced by
``torch.export`` (non-strict) and, for ONNX, translated by PyTorch's own exporter (``torch.onnx.export(...,
dynamo=True)``; ``pip install "adaptformer[export]"``). Beside it, in ``DIR``:

- ``preprocessing.json``: what turns an image (or clip) into ``pixel_values``: the task file's input spec (size,
  mean/std, crop fraction, resize mode, interpolation; frames and sampling rate for video);
- ``labels.json``: the class names, in output order;
- ``export.json``: the format, file, input and outputs with their shapes, the task, method, objective, backbone
  and its fingerprint, the versions that wrote it, and the check below.

Before anything is written the program is loaded back (``onnxruntime`` / ``torch.export.load``) and run on a
batch of another size than the traced one; its outputs must equal the eager model's within ``TOLERANCE`` (fp32),
or the export fails in one line. ``merge=True`` folds a method that is linear in the frozen weights into them
first (``tasks/merge.py``), so the program is the plain backbone and a head. A model that cannot be traced is
refused in one line naming the operation that blocks it.
"""

from __future__ import annotations

import contextlib
import copy
import platform
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapted.model import AdaptedModel
from ..data.transforms import InputSpec
from ..errors import AdaptFormerError, first_line
from ..objectives import Objective, get_objective
from ..utils.atomic import atomic_write, atomic_write_json
from ..utils.extras import require
from ..version import __version__
from .formats import FORMATS, INPUT, OUTPUTS, load_program

#: the largest difference allowed between the program's outputs and the eager model's (fp32)
TOLERANCE = 1e-4
#: the batch sizes traced with and checked at (different, so the dynamic batch is exercised)
TRACE_BATCH, CHECK_BATCH = 2, 3
MAX_BATCH = 4096


class TaskProgram(nn.Module):
    """What is exported: pixels in, the task's logits and probabilities out."""

    def __init__(self, model: AdaptedModel, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(pixel_values)
        return logits, self.objective.probabilities(logits)


@dataclass(frozen=True)
class Exported:
    directory: Path
    manifest: dict[str, Any]


def export_model(
    model: AdaptedModel,
    out: str | Path,
    format: str,
    spec: InputSpec | None = None,
    classes: list[str] | None = None,
    objective: str | None = None,
    about: dict[str, Any] | None = None,
) -> Exported:
    """Export ``model``'s active task (see the module docstring); ``about`` joins ``export.json``."""
    if format not in FORMATS:
        raise AdaptFormerError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if format == "onnx":
        require("onnx", "export --format onnx")
        require("onnxscript", "export --format onnx")
        require("onnxruntime", "export --format onnx")
    task = model.task
    spec = spec or model.input_spec()
    classes = list(classes if classes is not None else task.classes)
    goal = get_objective(objective if objective is not None else task.objective)
    with _traceable(model) as traced:
        return _export(traced, out, format, spec, classes, goal, about)


@contextlib.contextmanager
def _traceable(model: AdaptedModel):
    """``model`` as it is traced (CPU, fp32, eval) without changing the caller's: a copy where it is elsewhere or
    in another precision, and its train/eval mode given back afterwards."""
    tensors = [*model.parameters(), *model.buffers()]
    as_traced = all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors)
    was_training = model.training
    try:
        yield (model if as_traced else copy.deepcopy(model).float().cpu()).eval()
    finally:
        model.train(was_training)


def _export(
    model: AdaptedModel, out, format: str, spec: InputSpec, classes: list[str], goal, about: dict[str, Any] | None
) -> Exported:
    task = model.task
    program = TaskProgram(model, goal).eval()
    shape = spec.sample_shape
    example = torch.randn(TRACE_BATCH, *shape, generator=torch.Generator().manual_seed(0))
    what = f"method {task.config.name} on {model.source.name if model.source else type(model.backbone).__name__}"
    with _explicit_attention(program if format == "onnx" else None):
        exported = _trace(program, example, what)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as scratch:
        written = Path(scratch) / FORMATS[format]
        if format == "onnx":
            _write_onnx(exported, written, what)
        else:
            torch.export.save(exported, str(written))
        check = _check(program, written, format, shape, what)
        atomic_write(out / FORMATS[format], lambda temporary: Path(written).replace(temporary))
    manifest = {
        "format": format,
        "file": FORMATS[format],
        "input": {"name": INPUT, "datatype": "FP32", "shape": ["batch", *shape]},
        "outputs": [{"name": name, "datatype": "FP32", "shape": ["batch", len(classes)]} for name in OUTPUTS],
        "objective": goal.name,
        "method": task.config.name,
        "backbone": model.source.name if model.source else None,
        "fingerprint": model.backbone_fingerprint(),
        "check": check,
        "written_by": {"adaptformer": __version__, "torch": torch.__version__, "python": platform.python_version()},
        **(about or {}),
    }
    atomic_write_json(out / "preprocessing.json", spec.to_dict())
    atomic_write_json(out / "labels.json", classes)
    atomic_write_json(out / "export.json", manifest)
    return Exported(out, manifest)


@contextlib.contextmanager
def _explicit_attention(program: nn.Module | None):
    """timm's attention as its written-out matmul + softmax instead of ``scaled_dot_product_attention`` while
    tracing for ONNX (the same function: ONNX's translation of the fused op takes only 4-D inputs, and windowed
    attention (SAM, Hiera) passes 3-D ones); modules are put back as they were."""
    switched = [m for m in (program.modules() if program is not None else []) if getattr(m, "fused_attn", False)]
    for module in switched:
        module.fused_attn = False
    try:
        yield
    finally:
        for module in switched:
            module.fused_attn = True


def _trace(program: TaskProgram, example: torch.Tensor, what: str):
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with torch.no_grad():
            return torch.export.export(program, (example,), dynamic_shapes={"pixel_values": {0: batch}}, strict=False)
    except Exception as error:  # noqa: BLE001 - whatever torch.export meets, said in one line
        raise AdaptFormerError(f"export: {what} cannot be traced by torch.export: {_first_line(error)}") from None


def _write_onnx(exported, path: Path, what: str) -> None:
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter's progress lines are not the command's output
            program = torch.onnx.export(
                exported, input_names=[INPUT], output_names=list(OUTPUTS), dynamo=True, verbose=False
            )
            program.save(str(path))
    except Exception as error:  # noqa: BLE001 - an operation without an ONNX translation, say
        raise AdaptFormerError(
            f"export: {what} cannot be written as ONNX: {_blocking_operation(error)} (--format torch-export may work)"
        ) from None


def _check(program: TaskProgram, path: Path, format: str, shape: list[int], what: str) -> dict[str, Any]:
    """Run the written program on a batch of another size and compare it with the eager model."""
    x = torch.randn(CHECK_BATCH, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = [t.numpy() for t in program(x)]
    got = load_program(path, format, f"export --format {format}")(x.numpy())
    differences = {name: float(np.abs(e - g).max()) for name, e, g in zip(OUTPUTS, expected, got, strict=True)}
    worst = max(differences.values())
    if not worst <= TOLERANCE:
        raise AdaptFormerError(
            f"export: {what}: the {format} program differs from the eager model by {worst:.2e} (> {TOLERANCE:g})"
        )
    return {"batch": CHECK_BATCH, "max_abs_difference": differences, "tolerance": TOLERANCE}


def _blocking_operation(error: BaseException) -> str:
    """The operation the ONNX exporter could not translate, and why, from its report."""
    text = str(error)
    for cause in (error.__cause__, error.__context__):
        text += "\n" + str(cause or "")
    operation = re.search(r"target=(?:torch\.ops\.)?([\w.]+)", text)
    summary = text.split("## Exception summary", 1)[-1] if "## Exception summary" in text else ""
    reason = next((line.split(">:", 1)[1].strip() for line in summary.splitlines() if ">:" in line), "")
    if operation:
        return f"operation {operation.group(1)}" + (f" ({reason[:200]})" if reason else "")
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error, 300)}"
