"""AdaptFormer's options: the single source of their names, types, defaults and help."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ...errors import AdaptFormerError
from ...utils.options import check_choice, check_int, check_number, option
from ..base import MethodConfig
from ..layers import LayerSpec, normalize_layer_spec

LEARNABLE = "learnable"
PLACEMENTS = ("parallel", "sequential")
LAYERNORM_OPTIONS = ("none", "in", "out")
INIT_OPTIONS = ("lora", "kaiming_normal")


@dataclass(frozen=True)
class AdaptFormerConfig(MethodConfig):
    """An AdaptMLP bottleneck beside the frozen MLP of the chosen blocks; trains adapters + head."""

    name: ClassVar[str] = "adaptformer"
    label: ClassVar[str] = "AdaptFormer"
    reference: ClassVar[str] = "Chen et al., NeurIPS 2022 (arXiv 2205.13535); github.com/ShoufaChen/AdaptFormer"
    tune_axes: ClassVar[tuple] = (("scale", (0.05, 0.1, 0.2)), ("bottleneck", (16, 64)))
    benchmark_default: ClassVar[bool] = True

    bottleneck: int = option(64, "width r of the AdaptMLP: Down d->r, Up r->d")
    scale: float | str = option(0.1, "s in a = s*Up(ReLU(Down(x))): a number, or 'learnable' (a scalar starting at 1)")
    layernorm: Literal["none", "in", "out"] = option("none", "LayerNorm in the adapter: none, in (before Down), out")
    dropout: float = option(0.1, "dropout on the bottleneck activations (reference: 0.1 for images, 0 for video)")
    init: Literal["lora", "kaiming_normal"] = option(
        "lora", "lora: Down kaiming-uniform(a=sqrt 5), Up and biases 0 (reference code); kaiming_normal (paper text)"
    )
    placement: Literal["parallel", "sequential"] = option(
        "parallel", "parallel: a(x') beside the MLP (the paper's numbers); sequential: a(m) after the MLP branch"
    )
    layers: LayerSpec = option("all", "blocks that get an adapter or prompt: all, top:K, bottom:K or 0,3,5")

    def validate(self) -> None:
        super().validate()
        check_int("bottleneck", self.bottleneck, 1)
        if isinstance(self.scale, str):
            if self.scale != LEARNABLE:
                raise AdaptFormerError(f"scale: expected a number or '{LEARNABLE}', got {self.scale!r}")
        else:
            check_number("scale", self.scale)
            object.__setattr__(self, "scale", float(self.scale))
        check_choice("layernorm", self.layernorm, LAYERNORM_OPTIONS)
        check_choice("init", self.init, INIT_OPTIONS)
        check_choice("placement", self.placement, PLACEMENTS)
        check_number("dropout", self.dropout, 0.0, 0.999999)
        object.__setattr__(self, "layers", normalize_layer_spec(self.layers))

    @property
    def learnable_scale(self) -> bool:
        return self.scale == LEARNABLE
