"""SSF: a per-channel scale and shift after each operation of the frozen blocks."""

from ..registry import register_method
from .config import SSFConfig
from .task import ScaleShift, SSFTask

register_method(SSFConfig, SSFTask)

__all__ = ["SSFConfig", "SSFTask", "ScaleShift"]
