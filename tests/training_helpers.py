"""A tiny, fast training configuration on a generated image folder."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from adaptformer.train.config import TrainConfig
from formats import write_imagefolder

TINY_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def tiny_checkpoint(folder: Path) -> Path:
    """A 'pretrained' tiny ViT saved as a flat safetensors file, as a user would pass with --checkpoint."""
    path = folder / "tiny_vit.safetensors"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(123)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY_KWARGS)
        save_file(model.state_dict(), str(path))
    return path


def tiny_train_values(tmp_path: Path, **overrides) -> dict:
    """Flat training options for a tiny run on a generated image folder (what YAML files and sweeps hold)."""
    data = tmp_path / "data"
    if not data.exists():
        write_imagefolder(data, classes=("red", "green", "blue"), per_class=10)
    values = dict(
        dataset="imagefolder",
        data_root=str(data),
        model="vit_tiny_patch16_224",
        checkpoint=str(tiny_checkpoint(tmp_path)),
        model_kwargs=TINY_KWARGS,
        epochs=3,
        warmup_epochs=1,
        batch_size=8,
        effective_batch=8,
        lr=0.05,
        workers=0,
        precision="fp32",
        tensorboard=True,
    )
    values.update(overrides)
    return values


def tiny_train_config(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig.from_flat(tiny_train_values(tmp_path, **{"out": str(tmp_path / "run"), **overrides}))
