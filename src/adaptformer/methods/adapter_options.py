"""The options the sequential bottleneck adapters (Houlsby, Pfeiffer, Adapter+) share, with the Adapter+ code's
defaults (``conf/adapter/base_adapter.yaml``: bottleneck 8, DropPath 0.1 on the adapter, no dropout)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..utils.options import check_int, check_number, option
from .base import MethodConfig
from .layers import LayerSpec, normalize_layer_spec

NOT_MERGEABLE = "its adapters are nonlinear bottlenecks (GELU) in the blocks: they cannot fold into linear weights"


@dataclass(frozen=True)
class BottleneckAdapterConfig(MethodConfig):
    """Options of a sequential bottleneck adapter (not a method itself: Houlsby, Pfeiffer and Adapter+ are)."""

    tune_axes: ClassVar[tuple] = (("adapter_bottleneck", (8, 32)),)
    #: SGD at 0.4 collapsed or diverged on digits for all three (docs/results): lower rates
    learning_rates: ClassVar[tuple[float, ...]] = (0.03, 0.1, 0.25)

    adapter_bottleneck: int = option(8, "width r of each bottleneck adapter: Down d->r, GELU, Up r->d")
    adapter_dropout: float = option(0.0, "dropout on the bottleneck activations")
    adapter_drop_path: float = option(0.1, "DropPath on each adapter's output in training (Adapter+ code: 0.1)")
    layers: LayerSpec = option("all", "blocks that get an adapter or prompt: all, top:K, bottom:K or 0,3,5")

    def validate(self) -> None:
        super().validate()
        check_int("adapter_bottleneck", self.adapter_bottleneck, 1)
        check_number("adapter_dropout", self.adapter_dropout, 0.0, 0.999999)
        check_number("adapter_drop_path", self.adapter_drop_path, 0.0, 0.999999)
        object.__setattr__(self, "layers", normalize_layer_spec(self.layers))
