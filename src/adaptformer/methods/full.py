"""Full fine-tuning: every backbone weight trains with the head, so the task cannot share its backbone.

The task itself holds only the head; the host model unfreezes its backbone while a full task is on it and a
task file of a full task carries the backbone's weights too (under timm's names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import MethodConfig, Task


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Full fine-tuning: every weight trains."""

    name: ClassVar[str] = "full"
    shares_backbone: ClassVar[bool] = False


class FullTask(Task):
    config: FullConfig
