"""A task file to a program folder: the task loaded on its recorded backbone (merged first with ``merge``), then
``export_model`` (``program.py``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import AdaptFormerError
from ..tasks.files import load_task, preprocessing_of
from ..tasks.format import read_task_header
from ..tasks.merge import merged_model, refuse_unmergeable
from .program import FORMATS, Exported, export_model


def export_task(
    path: str | Path,
    out: str | Path,
    format: str = "onnx",
    merge: bool = False,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
    check_backbone: bool = True,
) -> Exported:
    """Export the task file ``path`` into ``out`` as ``format`` (``onnx`` or ``torch-export``)."""
    if format not in FORMATS:
        raise AdaptFormerError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    header = read_task_header(path)  # the tensors are read once, by load_task
    if merge:
        refuse_unmergeable(header.meta, path, "--merge")
    model = load_task(path, pretrained=pretrained, checkpoint=checkpoint, check_backbone=check_backbone)
    spec = preprocessing_of(header.meta, model)
    task = model.tasks[model.active_task]
    about = {"task": model.active_task, "task_file": Path(path).name, "merged": merge}
    if not merge:
        return export_model(model, out, format, spec, list(task.classes), task.objective, about=about)
    with tempfile.TemporaryDirectory(prefix="adaptformer-merge-") as scratch:  # the program holds the weights
        merged, _ = merged_model(model, scratch)
        return export_model(merged, out, format, spec, list(task.classes), task.objective, about=about)
