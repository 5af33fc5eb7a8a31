"""What a backbone's anatomy is: its blocks in order, and in each block where an adapter reads and where its
output is added, the channel layout and widths there, and the operations a task may modulate.

AdaptFormer's claim is that every vision transformer shares the MLP block, so an AdaptMLP fits beside it whatever
the attention looks like. The anatomy is found by mechanism, not declared (``discovery.py``: the MLP modules, a
probe forward of the model itself, each block read off the calls it made), and consumed by the adapted model's
hooks (``adapted/taps.py``) and by the methods (through ``methods.base.BackboneSpec``):

* ``BlockAnatomy.adapter_input``: ``residual`` where the block's output is exactly ``y = x' + m`` for x' the input
  of ``residual_at`` (the norm that feeds the MLP, the MLP itself in a post-norm block, or the block in a
  ConvNeXt-like one) and m the output of ``branch_at``: the paper's placement. ``mlp_input`` where no such pair
  holds (a post-norm ``LN(x' + m)``, a layer scale written as a multiplication): the adapter sits beside the MLP
  module, reading its input, its output added to the MLP's;
* the channel axis at those two points ((B, N, C), (B, H, W, C), or (B, C, H, W) around a 1x1-convolution MLP)
  and their widths;
* the **operations** (``Site``) LoRA, BitFit and SSF modulate, each a plain ``nn.Linear`` or norm that the block
  calls once on channels-last tokens, with its role: the attention's input projections (``qkv``, or
  ``q``/``k``/``v``/``kv``), its output projection (``proj``), the MLP's projections (``fc1``, ``fc2``, or by their
  names in a gated MLP) and the norms (``norm1``, ``norm2``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Site:
    """One operation of a block a task can modulate: (input width, output width, has a bias)."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    #: ``attention_input`` (qkv, q, k, v, kv), ``attention_output`` (proj), ``mlp`` (its projections), ``norm``
    role: str = "mlp"
    #: a norm's kind (``layer``: LayerNorm, ``rms``: RMSNorm) and epsilon; empty / 0 for a Linear
    norm: str = ""
    eps: float = 0.0


@dataclass(frozen=True)
class BlockAnatomy:
    """Where a block's MLP branch starts and ends: the input of ``residual_at`` is the adapter's input, the output
    of ``branch_at`` is m. ``adapter_input``: ``residual`` (the input is x', and ``y = x' + m``) or ``mlp_input``
    (the MLP's own input, the adapter beside the MLP module). ``shared_branch``: ``branch_at`` also ends the
    attention branch (one DropPath module called twice, CaiT), so only its call after ``residual_at`` ran is the
    MLP branch. The axes say where the channels are in those two tensors; ``sites`` are the block's operations
    (``Site`` name -> module) and ``shapes`` their widths."""

    residual_at: nn.Module
    branch_at: nn.Module
    shared_branch: bool = False
    adapter_input: str = "residual"
    residual_axis: int = -1
    branch_axis: int = -1
    in_width: int = 0
    out_width: int = 0
    sites: dict[str, nn.Module] = field(default_factory=dict)
    shapes: dict[str, Site] = field(default_factory=dict)

    def describe(self, names: dict[int, str]) -> str:
        """The block's anatomy as one line of text (what task files compare)."""
        sites = ",".join(f"{n}:{s.in_features}>{s.out_features}{'b' if s.bias else ''}" for n, s in self.shapes.items())
        return (
            f"{self.adapter_input} {names.get(id(self.residual_at), '?')}@{self.residual_axis}->"
            f"{names.get(id(self.branch_at), '?')}@{self.branch_axis} {self.in_width}>{self.out_width} [{sites}]"
        )


@dataclass(frozen=True)
class Anatomy:
    """The anatomy of a whole backbone: its blocks in order and each block's :class:`BlockAnatomy`."""

    blocks: tuple[nn.Module, ...]
    parts: tuple[BlockAnatomy, ...]
    names: tuple[str, ...]  # each block's qualified name in the backbone
    signature: str  # a hash of every block's description: the same model gives the same one
    left_out: tuple[str, ...] = ()  # modules holding an MLP that take no adapter, each with its reason
    feature_dim: int = 0  # the width of the pooled features a task's head receives
    probe_size: int = 0  # the input side the probe ran at (the backbone's own, or the first size it runs at)

    @property
    def adapter_input(self) -> str:
        """``residual``, ``mlp_input``, or ``mixed`` (some blocks each)."""
        kinds = {part.adapter_input for part in self.parts}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def widths(self) -> tuple[int, ...]:
        return tuple(part.in_width for part in self.parts)

    def branch_widths(self) -> tuple[int, ...]:
        return tuple(part.out_width for part in self.parts)


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a module's input or output (a tensor, a tuple or list, a dict or ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None
