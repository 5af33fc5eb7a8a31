"""Shared fixtures: tiny timm ViTs (width 32, depth 2) so the whole suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

import pytest
import timm
import torch

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def tiny_vit(num_classes: int = 5, seed: int = 0, **overrides) -> torch.nn.Module:
    """A real timm VisionTransformer, small enough to run instantly; same seed -> same weights."""
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **{**TINY, **overrides}
    )
    return model.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def perturb_task(model, scale: float, seed: int = 0, task: str | None = None):
    """``model`` with its task's tensors (``task``, default the active one) moved off their (often zero)
    initialisation by seeded noise of size ``scale``, so a check sees the task at work; returns the model."""
    generator = torch.Generator().manual_seed(seed)
    parameters = (model.tasks[task] if task is not None else model.task).parameters()
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled, pre-head features of a timm ViT (what the head sees)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def tiny_hf_vit(seed: int = 0) -> torch.nn.Module:
    """A real Hugging Face ViTModel (width 32, depth 2, 32 px, patch 8); same seed -> same weights."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    return ViTModel(config, add_pooling_layer=False).eval()


def tiny_videomae_config(**overrides):
    """A Hugging Face VideoMAEConfig small enough to run instantly (32 px, 4 frames, width 32, depth 2)."""
    from transformers import VideoMAEConfig

    values = dict(
        image_size=32,
        patch_size=16,
        num_frames=4,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return VideoMAEConfig(**{**values, **overrides})
