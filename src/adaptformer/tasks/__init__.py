"""Task files: one task's tensors and description, apart from the backbone."""

from .files import apply_task, load_task, preprocessing_of, save_task, task_metadata
from .format import FORMAT, FORMAT_VERSION, TaskHeader, read_task, read_task_header
from .reference import import_reference_checkpoint

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "TaskHeader",
    "apply_task",
    "import_reference_checkpoint",
    "load_task",
    "preprocessing_of",
    "read_task",
    "read_task_header",
    "save_task",
    "task_metadata",
]
