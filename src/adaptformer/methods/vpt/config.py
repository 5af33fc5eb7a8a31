"""Visual Prompt Tuning's options (the paper's VPT baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ...utils.options import check_choice, check_int, option
from ..base import MethodConfig
from ..layers import LayerSpec, normalize_layer_spec

VPT_MODES = ("deep", "shallow", "kv")


@dataclass(frozen=True)
class VPTConfig(MethodConfig):
    """Learnable prompt tokens prepended to the token sequence; trains prompts + head."""

    name: ClassVar[str] = "vpt"
    label: ClassVar[str] = "VPT"
    reference: ClassVar[str] = "Jia et al., ECCV 2022 (arXiv 2203.12119); github.com/KMnP/vpt"
    tune_axes: ClassVar[tuple] = (("vpt_tokens", (1, 8)),)
    benchmark_default: ClassVar[bool] = True

    vpt_tokens: int = option(1, "prompt tokens per prompted block")
    vpt_mode: Literal["deep", "shallow", "kv"] = option(
        "deep",
        "deep: new prompts before each chosen block, dropped after it; shallow: before block 0 only; "
        "kv: learned keys and values added to each chosen block's attention (prefix-style, never queries)",
    )
    layers: LayerSpec = option("all", "blocks that get an adapter or prompt: all, top:K, bottom:K or 0,3,5")

    def title(self) -> str:
        return f"VPT-{self.vpt_mode}"

    def validate(self) -> None:
        super().validate()
        check_int("vpt_tokens", self.vpt_tokens, 1)
        check_choice("vpt_mode", self.vpt_mode, VPT_MODES)
        object.__setattr__(self, "layers", normalize_layer_spec(self.layers))
