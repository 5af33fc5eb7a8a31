"""LoRA's options: rank, alpha, the layers it updates, dropout, and the blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...errors import AdaptFormerError
from ...utils.options import check_int, check_number, option
from ..base import MethodConfig
from ..layers import LayerSpec, normalize_layer_spec

#: --lora-targets -> the roles of the block operations that get an update (``backbones/anatomy.py``): qkv is the
#: attention's input projection(s), fused or not (timm's qkv, or q, k, v; q and kv), proj its output projection,
#: mlp every projection of the MLP (fc1 and fc2, or a gated MLP's three)
TARGET_SITES = {"qkv": ("attention_input",), "proj": ("attention_output",), "mlp": ("mlp",)}


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    """Low-rank updates s·B·A beside frozen linear layers (LoRA); trains A, B + head."""

    name: ClassVar[str] = "lora"
    label: ClassVar[str] = "LoRA"
    reference: ClassVar[str] = "Hu et al., ICLR 2022 (arXiv 2106.09685); github.com/huggingface/peft"
    benchmark_default: ClassVar[bool] = True

    lora_rank: int = option(8, "rank r of each update: A in->r, B r->out")
    lora_alpha: float = option(8.0, "the update is scaled by lora_alpha / lora_rank (PEFT's lora_alpha)")
    lora_targets: tuple[str, ...] = option(
        ("qkv",), "layers that get an update: qkv (the fused attention input), proj, mlp (fc1 and fc2)"
    )
    lora_dropout: float = option(0.0, "dropout on each update's input (PEFT's lora_dropout)")
    layers: LayerSpec = option("all", "blocks that get an adapter or prompt: all, top:K, bottom:K or 0,3,5")

    def validate(self) -> None:
        super().validate()
        check_int("lora_rank", self.lora_rank, 1)
        check_number("lora_alpha", self.lora_alpha, 0.0)
        object.__setattr__(self, "lora_alpha", float(self.lora_alpha))
        check_number("lora_dropout", self.lora_dropout, 0.0, 0.999999)
        targets = (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)
        wrong = [t for t in targets if t not in TARGET_SITES]
        if not targets or wrong:
            raise AdaptFormerError(f"lora_targets: expected some of {', '.join(TARGET_SITES)}, got {list(targets)!r}")
        object.__setattr__(self, "lora_targets", tuple(dict.fromkeys(targets)))
        object.__setattr__(self, "layers", normalize_layer_spec(self.layers))

    @property
    def roles(self) -> dict[str, tuple[str, ...]]:
        """Each target and the roles of the operations it updates."""
        return {target: TARGET_SITES[target] for target in self.lora_targets}

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.lora_rank
