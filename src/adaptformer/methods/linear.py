"""Linear probing: nothing is added to the frozen backbone; only the head (and a trainable fc_norm) trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import MethodConfig, Task


@dataclass(frozen=True)
class LinearConfig(MethodConfig):
    """Linear probe: frozen backbone, BatchNorm + Linear head."""

    name: ClassVar[str] = "linear"


class LinearTask(Task):
    config: LinearConfig
