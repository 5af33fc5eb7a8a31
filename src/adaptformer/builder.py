"""One call from a model name to an adapted model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .adapters.methods import AdaptConfig, adapt
from .backbones.timm import create_backbone


def create_model(
    name: str,
    method: str = "adaptformer",
    num_classes: int | None = None,
    pretrained: bool = True,
    checkpoint: str | Path | None = None,
    config: AdaptConfig | None = None,
    timm_kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> nn.Module:
    """``create_model("vit_base_patch16_224", "adaptformer", num_classes=100, checkpoint="mae.pth")``.

    ``name`` is a timm model name or an embedded backbone (``adaptformer/vit-tiny-cifar10``); ``checkpoint`` is
    an optional local weights file (timm, MAE or reference layout); ``options`` are :class:`AdaptConfig` fields.
    """
    backbone = create_backbone(name, pretrained=pretrained, checkpoint=checkpoint, **(timm_kwargs or {}))
    if config is not None:
        return adapt(backbone, num_classes=num_classes, config=config)
    return adapt(backbone, method, num_classes=num_classes, **options)
