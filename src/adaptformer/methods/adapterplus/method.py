"""Adapter+ (Steitz & Roth, CVPR 2024, "Adapters Strike Back"): the post-block position, ``z ← z + s ⊙ A(z)`` on
the block's output ``z = x' + m``, no LayerNorm, a learned scale ``s`` per channel starting at 1, Houlsby
initialisation, DropPath 0.1 on the adapter (``methods/post_block.py``; the Adapter+ code's ``post``
configuration with ``scaling: channel``, ``conf/adapter/adapter_plus.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..adapter_options import BottleneckAdapterConfig
from ..post_block import PostBlockAdapterTask


@dataclass(frozen=True)
class AdapterPlusConfig(BottleneckAdapterConfig):
    """A bottleneck after each block with a learned per-channel scale (Adapter+); trains adapters + head."""

    name: ClassVar[str] = "adapterplus"
    label: ClassVar[str] = "Adapter+"
    reference: ClassVar[str] = "Steitz & Roth, CVPR 2024 (arXiv 2406.06820); github.com/visinf/adapter_plus"
    benchmark_default: ClassVar[bool] = True


class AdapterPlusTask(PostBlockAdapterTask):
    config: AdapterPlusConfig
    channel_scale: ClassVar[bool] = True
