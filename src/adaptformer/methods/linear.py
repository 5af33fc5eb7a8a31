"""Linear probing: nothing is added to the frozen backbone; only the head (and a trainable fc_norm) trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import MethodConfig, Task
from .registry import register_method


@dataclass(frozen=True)
class LinearConfig(MethodConfig):
    """Linear probe: frozen backbone, BatchNorm + Linear head."""

    name: ClassVar[str] = "linear"
    label: ClassVar[str] = "Linear probe"
    reference: ClassVar[str] = "the usual baseline: a head on frozen features"
    caches_features: ClassVar[bool] = True
    benchmark_default: ClassVar[bool] = True


class LinearTask(Task):
    config: LinearConfig
    merge_refusal = None  # nothing to fold: the merged backbone is the backbone


register_method(LinearConfig, LinearTask)
