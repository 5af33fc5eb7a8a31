"""Full fine-tuning: every backbone weight trains with the head, so the task cannot share its backbone.

The task itself holds only the head; the host model unfreezes its backbone while a full task is on it and a
task file of a full task carries the backbone's weights too (under timm's names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import MethodConfig, Task
from .registry import register_method


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Full fine-tuning: every weight trains."""

    name: ClassVar[str] = "full"
    shares_backbone: ClassVar[bool] = False
    label: ClassVar[str] = "Full fine-tuning"
    reference: ClassVar[str] = "the usual baseline: every weight trains"
    #: full fine-tuning moves every weight: rates a tenth to a hundredth of the others'
    learning_rates: ClassVar[tuple[float, ...]] = (0.005, 0.025, 0.1)
    benchmark_options: ClassVar[dict] = {"blr": 0.01}
    benchmark_default: ClassVar[bool] = True


class FullTask(Task):
    config: FullConfig
    merge_refusal = "its task file already holds the whole fine-tuned backbone (load it with apply_task)"


register_method(FullConfig, FullTask)
