"""RepAdapter (Luo et al., 2023, "Towards Efficient Visual Adaption via Structural Re-parameterization").

A linear adapter on the output of each block's norms, so on the input of the attention and of the MLP:
``h ← h + s·(Up_g(Dropout(Down h + b_D)) + b_U)``, Down a Linear d→r (Xavier-uniform, zero bias), Up a grouped
Linear r→d (``g`` groups, block-diagonal; zeros), as ``repadapter.py`` (class ``RepAdapter``, a pair of 1×1
Conv1d) of the official code (github.com/luogen1996/RepAdapter). Having no nonlinearity, it folds into the layers
that read the norm (``set_RepWeight`` there): with ``M = I + s·Up·Down`` and ``c = s·(Up·b_D + b_U)``, a
consumer ``W h + b`` becomes ``(W M) h + (b + W c)`` — zero cost at inference (``adaptformer merge``).

Parameters: ``blocks.{i}.{norm}.down.weight`` (r, d), ``down.bias``, ``up.weight`` (d, r/g), ``up.bias``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...errors import AdaptFormerError
from ...utils.options import check_int, check_number, option
from ..base import BackboneSpec, MethodConfig
from ..layers import LayerSpec, normalize_layer_spec, resolve_layers
from ..sites import SiteTask


@dataclass(frozen=True)
class RepAdapterConfig(MethodConfig):
    """Linear adapters before each block's attention and MLP, foldable into the weights (RepAdapter)."""

    name: ClassVar[str] = "repadapter"
    label: ClassVar[str] = "RepAdapter"
    reference: ClassVar[str] = "Luo et al., 2023 (arXiv 2302.08106); github.com/luogen1996/RepAdapter"
    tune_axes: ClassVar[tuple] = (("repadapter_scale", (0.1, 1.0, 10.0)),)
    #: SGD at 0.4 diverged in one seed of three on digits (docs/results)
    learning_rates: ClassVar[tuple[float, ...]] = (0.03, 0.1, 0.25)

    repadapter_bottleneck: int = option(8, "width r of each adapter (official default 8)")
    repadapter_groups: int = option(2, "groups g of the grouped Up projection (official default 2)")
    repadapter_scale: float = option(1.0, "s in h + s·adapter(h) (the official code searches 0.01-100 per task)")
    repadapter_dropout: float = option(0.1, "dropout between Down and Up (official 0.1)")
    layers: LayerSpec = option("all", "blocks that get an adapter or prompt: all, top:K, bottom:K or 0,3,5")

    def validate(self) -> None:
        super().validate()
        check_int("repadapter_bottleneck", self.repadapter_bottleneck, 1)
        check_int("repadapter_groups", self.repadapter_groups, 1)
        if self.repadapter_bottleneck % self.repadapter_groups:
            raise AdaptFormerError(
                f"repadapter_groups: {self.repadapter_groups} does not divide repadapter_bottleneck "
                f"{self.repadapter_bottleneck}"
            )
        check_number("repadapter_scale", self.repadapter_scale)
        object.__setattr__(self, "repadapter_scale", float(self.repadapter_scale))
        check_number("repadapter_dropout", self.repadapter_dropout, 0.0, 0.999999)
        object.__setattr__(self, "layers", normalize_layer_spec(self.layers))


class GroupedLinearAdapter(nn.Module):
    def __init__(self, width: int, config: RepAdapterConfig):
        super().__init__()
        rank, groups = config.repadapter_bottleneck, config.repadapter_groups
        self.groups, self.scale = groups, config.repadapter_scale
        self.down = nn.Linear(width, rank)
        self.dropout = nn.Dropout(config.repadapter_dropout) if config.repadapter_dropout > 0 else nn.Identity()
        self.up = nn.Linear(rank // groups, width)  # each group's (d/g, r/g) block, stacked: weight (d, r/g)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def dense_up(self) -> torch.Tensor:
        """Up as the (d, r) block-diagonal matrix the grouped projection is."""
        width, per_group = self.up.weight.shape
        blocks = self.up.weight.reshape(self.groups, width // self.groups, per_group)
        return torch.block_diag(*blocks)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.down(out))  # (..., r)
        grouped = h.unflatten(-1, (self.groups, -1))  # (..., g, r/g)
        weight = self.up.weight.unflatten(0, (self.groups, -1))  # (g, d/g, r/g)
        up = torch.einsum("...gk,gok->...go", grouped, weight).flatten(-2) + self.up.bias
        return out + self.scale * up

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) with adapter(h) = M h + c in eval mode."""
        up = self.dense_up()
        eye = torch.eye(up.shape[0], dtype=up.dtype, device=up.device)
        return eye + self.scale * up @ self.down.weight, self.scale * (up @ self.down.bias + self.up.bias)


class RepAdapterTask(SiteTask):
    config: RepAdapterConfig

    def __init__(self, config: RepAdapterConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(config, classes, backbone)
        sites = backbone.sites_by_role(config.name, {"norms before attention and MLP": ("norm",)})
        self.readers: dict[int, dict[str, list[str]]] = {}
        blocks = {}
        for index in resolve_layers(config.layers, backbone.depth):
            norms = list(sites[index].values())[:2]  # the norm before the attention, the norm before the MLP
            for site in norms:
                if site.out_features % config.repadapter_groups:
                    raise AdaptFormerError(
                        f"method repadapter: repadapter_groups {config.repadapter_groups} does not divide the "
                        f"width {site.out_features} of block {index}'s {site.name}"
                    )
            blocks[str(index)] = nn.ModuleDict({s.name: GroupedLinearAdapter(s.out_features, config) for s in norms})
            self.readers[index] = _readers(backbone, index, [s.name for s in norms])
        self.blocks = nn.ModuleDict(blocks)

    def merge_into(self, index: int, modules: dict[str, nn.Module]) -> None:
        """Fold block ``index``'s adapters into the layers that read its norms (see the module docstring)."""
        for norm, adapter in self.blocks[str(index)].items():
            readers = self.readers[index].get(norm)
            if not readers:
                raise AdaptFormerError(
                    f"repadapter: block {index}'s {norm} does not feed its attention or MLP directly (a post-norm "
                    "block?): the adapter cannot be folded there"
                )
            transform, shift = adapter.affine()
            for name in readers:
                layer = modules[name]
                if layer.bias is None:  # adding one would change the architecture the weights load into
                    raise AdaptFormerError(f"repadapter: block {index}'s {name} has no bias to take the shift")
                weight = layer.weight.float()
                layer.bias.copy_((layer.bias.float() + weight @ shift.float()).to(layer.bias.dtype))
                layer.weight.copy_((weight @ transform.float()).to(layer.weight.dtype))


def _readers(backbone: BackboneSpec, index: int, norms: list[str]) -> dict[str, list[str]]:
    """The layers that read each of a pre-norm block's two norms: the attention's input projections, then the
    MLP's input projections (of the norm's width; its output projection reads the hidden width). A block whose
    MLP branch does not start at x' (post-norm) has none: it cannot be merged."""
    if len(norms) != 2 or backbone.adapter_input(index) != "residual":
        return {}
    sites = backbone.sites[index] if backbone.sites else {}
    attention = [n for n, s in sites.items() if s.role == "attention_input"]
    mlp = [n for n, s in sites.items() if s.role == "mlp"]
    width = sites[norms[1]].out_features
    mlp_inputs = [n for n in mlp[:-1] if sites[n].in_features == width]
    return {norms[0]: attention, norms[1]: mlp_inputs}
