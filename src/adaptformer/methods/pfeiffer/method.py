"""Pfeiffer adapters (Pfeiffer et al., EACL 2021): after the MLP of each chosen block, ``z ← z + A(LN(z))`` on the
block's output ``z = x' + m``, with a trainable LayerNorm and a scale of 1 (``methods/post_block.py``; the
Adapter+ code's ``pfeiffer`` configuration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..adapter_options import BottleneckAdapterConfig
from ..post_block import PostBlockAdapterTask


@dataclass(frozen=True)
class PfeifferConfig(BottleneckAdapterConfig):
    """A LayerNorm'd bottleneck adapter after each block's MLP (Pfeiffer); trains adapters + head."""

    name: ClassVar[str] = "pfeiffer"
    label: ClassVar[str] = "Pfeiffer adapter"
    reference: ClassVar[str] = "Pfeiffer et al., EACL 2021 (arXiv 2005.00247); as in github.com/visinf/adapter_plus"


class PfeifferTask(PostBlockAdapterTask):
    config: PfeifferConfig
    adapter_norm: ClassVar[bool] = True
