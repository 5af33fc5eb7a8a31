"""SSF: a per-channel scale and shift after each operation of the frozen blocks."""

from .config import SSFConfig
from .task import ScaleShift, SSFTask

__all__ = ["SSFConfig", "SSFTask", "ScaleShift"]
