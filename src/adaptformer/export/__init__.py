"""Shipping a task as one program (ONNX or ``torch.export``) with its preprocessing and labels beside it, and
running such a folder (``predict --onnx``)."""

from .formats import FORMATS
from .program import Exported, TaskProgram, export_model
from .runner import ExportedTask
from .task import export_task

__all__ = ["FORMATS", "Exported", "ExportedTask", "TaskProgram", "export_model", "export_task"]
