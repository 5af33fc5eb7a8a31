"""SSF's options: how the scales and shifts start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ...utils.options import check_choice, option
from ..base import MethodConfig

SSF_INITS = ("normal", "identity")


@dataclass(frozen=True)
class SSFConfig(MethodConfig):
    """A per-channel scale and shift after each operation of the blocks (SSF); trains them + head."""

    name: ClassVar[str] = "ssf"
    label: ClassVar[str] = "SSF"
    reference: ClassVar[str] = "Lian et al., NeurIPS 2022 (arXiv 2210.08823); github.com/dongzelian/SSF"

    ssf_init: Literal["normal", "identity"] = option(
        "normal", "normal: scale ~ N(1, 0.02), shift ~ N(0, 0.02) (the SSF code); identity: 1 and 0"
    )

    def validate(self) -> None:
        super().validate()
        check_choice("ssf_init", self.ssf_init, SSF_INITS)
