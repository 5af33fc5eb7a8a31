"""Backbones that ship inside the package, so the library works offline out of the box.

Each entry names a timm architecture plus the keyword arguments that shape it, and a safetensors file (timm
key format) under ``adaptformer/weights``. The ``pretrain`` command produces such files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EmbeddedBackbone:
    name: str
    timm_name: str
    timm_kwargs: dict[str, Any]
    weights_file: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return int(self.timm_kwargs["img_size"])

    def weights_path(self) -> Path:
        return Path(str(resources.files("adaptformer") / "weights" / self.weights_file))

    def card(self) -> dict[str, Any]:
        """The training card written beside the weights (recipe, accuracy, time), or {} if absent."""
        path = self.weights_path().with_suffix(".json")
        return json.loads(path.read_text()) if path.exists() else {}


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

VIT_TINY_CIFAR10 = EmbeddedBackbone(
    name="adaptformer/vit-tiny-cifar10",
    timm_name="vit_tiny_patch16_224",
    timm_kwargs=dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3),
    weights_file="vit_tiny_cifar10.safetensors",
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    description="ViT (width 192, depth 6, patch 4, 32 px) trained from scratch on CIFAR-10 by `adaptformer pretrain`",
)

EMBEDDED: dict[str, EmbeddedBackbone] = {VIT_TINY_CIFAR10.name: VIT_TINY_CIFAR10}


def get_embedded(name: str) -> EmbeddedBackbone | None:
    return EMBEDDED.get(name)
