"""FacT (Jie & Deng, AAAI 2023, "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer").

All the increments ΔW of the blocks' linear layers form one tensor, factorised with factors shared by every
layer: U (d→r) and V (r→d, zero at the start, so a new task is the pretrained model), and per layer a small
core, so that for an input x the increment adds ``s · V(Dropout(core(U x)))``. A layer of width a·d → b·d (the
fused qkv: 1 → 3, fc1: 1 → 4, fc2: 4 → 1) works on its a input chunks and b output chunks of width d:

* **FacT-TT** (tensor-train): each layer has its own core, a (b·r × a·r) matrix;
* **FacT-TK** (Tucker): the cores are slices of one r×r×r tensor C contracted with P (r × slots), a column of
  P per r×r slot (q, k, v, proj, 4 for fc1, 4 for fc2: twelve per ViT block).

As ``FacT/fact_tt.py`` and ``FacT/fact_tk.py`` of the official code (github.com/JieShibo/PETL-ViT): the same
initialisation (U as an ``nn.Linear``, V zeros; TT cores as ``nn.Linear``; C and P Xavier-uniform), dropout 0.1
on the core's output, and for TK the same slot layout (a fused qkv uses one slot per output chunk, an MLP
layer reshapes its four slots into one r × 4r matrix). Linear in x, so ``merge`` adds ΔW to the layers.

Parameters: ``fact_u.weight`` (r, d), ``fact_v.weight`` (d, r); TT ``blocks.{i}.{site}.weight``; TK
``fact_c`` (r, r, r) and ``fact_p`` (r, slots).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...backbones.anatomy import Site
from ...errors import AdaptFormerError
from ...utils.options import check_int, check_number, option
from ..base import BackboneSpec, MethodConfig
from ..sites import ALL_ROLES, SiteTask

LINEAR_ROLES = tuple(role for role in ALL_ROLES if role != "norm")


@dataclass(frozen=True)
class FacTTTConfig(MethodConfig):
    """Weight increments factorised as a tensor train with model-wide factors (FacT-TT); trains them + head."""

    name: ClassVar[str] = "fact-tt"
    label: ClassVar[str] = "FacT-TT"
    reference: ClassVar[str] = "Jie & Deng, AAAI 2023 (arXiv 2212.03145); github.com/JieShibo/PETL-ViT (FacT)"
    decomposition: ClassVar[str] = "tt"
    #: SGD at 0.4 diverged in every seed of the digits sweep (docs/results): rates a quarter of the others'
    learning_rates: ClassVar[tuple[float, ...]] = (0.03, 0.1, 0.25)
    tune_axes: ClassVar[tuple] = (("fact_scale", (0.1, 1.0, 10.0)), ("fact_rank", (8, 16)))

    fact_rank: int = option(8, "rank r of the shared factors U (d->r), V (r->d) and of the cores")
    fact_scale: float = option(1.0, "s on every increment (official configs: 0.01-100 per task; TT often 1, TK 0.1)")
    fact_dropout: float = option(0.1, "dropout on the cores' output (official 0.1)")

    def validate(self) -> None:
        super().validate()
        check_int("fact_rank", self.fact_rank, 1)
        check_number("fact_scale", self.fact_scale)
        object.__setattr__(self, "fact_scale", float(self.fact_scale))
        check_number("fact_dropout", self.fact_dropout, 0.0, 0.999999)


@dataclass(frozen=True)
class FacTTKConfig(FacTTTConfig):
    """Weight increments factorised as a Tucker tensor with model-wide factors (FacT-TK); trains them + head."""

    name: ClassVar[str] = "fact-tk"
    label: ClassVar[str] = "FacT-TK"
    decomposition: ClassVar[str] = "tk"


@dataclass(frozen=True)
class _Layout:
    """How one layer's increment is computed: its input and output chunks and, for TK, its slots."""

    chunks_in: int
    chunks_out: int
    first_slot: int
    per_output_slot: bool  # TK: one slot per output chunk (a fused qkv), else one reshaped matrix

    @property
    def slots(self) -> int:
        return self.chunks_in * self.chunks_out


class FacTTask(SiteTask):
    config: FacTTTConfig

    def __init__(self, config: FacTTTConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        rank, width = config.fact_rank, backbone.dim
        sites = backbone.sites_by_role(config.name, {"linear layers": LINEAR_ROLES})
        self.layouts: dict[tuple[int, str], _Layout] = {}
        slot = 0
        for index, block in enumerate(sites):
            for name, site in block.items():
                self.layouts[index, name] = layout = _layout_of(config.name, index, site, width, slot)
                slot += layout.slots
        self.fact_u = nn.Linear(width, rank, bias=False)
        self.fact_v = nn.Linear(rank, width, bias=False)
        nn.init.zeros_(self.fact_v.weight)
        self.dropout = nn.Dropout(config.fact_dropout) if config.fact_dropout > 0 else nn.Identity()
        if config.decomposition == "tt":
            cores = {}
            for (index, name), layout in self.layouts.items():
                cores.setdefault(str(index), {})[name] = nn.Linear(
                    layout.chunks_in * rank, layout.chunks_out * rank, bias=False
                )
            self.blocks = nn.ModuleDict({k: nn.ModuleDict(v) for k, v in cores.items()})
        else:
            self.blocks = nn.ModuleDict()
            self.fact_c = nn.Parameter(torch.empty(rank, rank, rank))
            self.fact_p = nn.Parameter(torch.empty(rank, slot))
            nn.init.xavier_uniform_(self.fact_c)
            nn.init.xavier_uniform_(self.fact_p)

    def modulates(self, index: int, site: str) -> bool:
        return (index, site) in self.layouts

    def site_output(self, index: int, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if not self.modulates(index, site):
            return out
        return out + self.increment(index, site, x).to(out.dtype)

    def increment(self, index: int, site: str, x: torch.Tensor) -> torch.Tensor:
        """``s · V(Dropout(core(U x)))`` for one layer, x of its input width."""
        layout, rank = self.layouts[index, site], self.config.fact_rank
        u = self.fact_u(x.unflatten(-1, (layout.chunks_in, -1))).flatten(-2)  # (..., a·r)
        if self.config.decomposition == "tt":
            core = self.blocks[str(index)][site](u)
        else:
            slots = torch.einsum("abk,kn->abn", self.fact_c, self.fact_p[:, layout.first_slot :][:, : layout.slots])
            if layout.per_output_slot:  # the official q, k, v: a slot per output chunk
                core = torch.cat([u @ slots[:, :, j] for j in range(layout.slots)], dim=-1)
            elif layout.chunks_in == 1:  # the official fc1: (u @ C·P.reshape(r, n·r)), then n chunks
                core = u @ slots.reshape(rank, layout.slots * rank)
            else:  # the official fc2: (U of each input chunk) @ C·P.reshape(r, n·r)ᵀ
                core = u @ slots.reshape(rank, layout.slots * rank).t()
        v = self.fact_v(self.dropout(core).unflatten(-1, (layout.chunks_out, rank)))
        return v.flatten(-2) * self.config.fact_scale

    def merge_into(self, index: int, modules: dict[str, nn.Module]) -> None:
        """Add each layer's ΔW to its weight: the increment is linear in x, so ΔWᵀ is the increment of the
        identity's rows (in eval mode: no dropout)."""
        for (block, site), _ in self.layouts.items():
            if block == index:
                layer = modules[site]
                eye = torch.eye(layer.in_features, dtype=self.fact_u.weight.dtype, device=layer.weight.device)
                delta = self.increment(index, site, eye).float().t()  # (out, in)
                layer.weight.add_(delta.to(layer.weight.dtype))


def _layout_of(method: str, index: int, site: Site, width: int, first_slot: int) -> _Layout:
    if site.in_features % width or site.out_features % width:
        raise AdaptFormerError(
            f"method {method}: block {index}'s {site.name} maps {site.in_features} -> {site.out_features} channels, "
            f"not whole multiples of the model width {width}, which FacT's shared factors need"
        )
    chunks_in, chunks_out = site.in_features // width, site.out_features // width
    if chunks_in > 1 and chunks_out > 1:
        raise AdaptFormerError(f"method {method}: block {index}'s {site.name} is wider than d on both sides")
    per_output_slot = site.role == "attention_input" and chunks_out > 1
    return _Layout(chunks_in, chunks_out, first_slot, per_output_slot)
