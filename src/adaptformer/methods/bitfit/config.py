"""BitFit's options: none beyond the head's (every bias of every block trains)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..base import MethodConfig


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    """The frozen blocks' biases (BitFit); trains bias offsets + head."""

    name: ClassVar[str] = "bitfit"
    label: ClassVar[str] = "BitFit"
    reference: ClassVar[str] = "Ben Zaken et al., ACL 2022 (arXiv 2106.10199)"
