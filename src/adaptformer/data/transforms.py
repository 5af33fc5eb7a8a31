"""Image transforms of the paper's recipe, sized and normalised for the backbone at hand.

Train: RandomResizedCrop(size, bicubic) + horizontal flip. Eval: Resize(size / crop_pct) + CenterCrop(size).
For ViT-B at 224 px with timm's crop_pct 0.875 that is exactly Resize(256) + CenterCrop(224), ImageNet mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms as T


@dataclass(frozen=True)
class InputSpec:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875

    @classmethod
    def from_model(cls, model) -> InputSpec:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = int(cfg.get("input_size", (3, 224, 224))[-1])
        patch_embed = getattr(model, "patch_embed", None)
        if getattr(patch_embed, "img_size", None):  # the size the model was built for (e.g. img_size=16)
            size = int(patch_embed.img_size[-1])
        return cls(
            size=size,
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
        )


def train_transform(spec: InputSpec, hflip: float = 0.5, scale_min: float = 0.08, augment: bool = True):
    if not augment:
        return eval_transform(spec)
    steps = [T.RandomResizedCrop(spec.size, scale=(scale_min, 1.0), interpolation=T.InterpolationMode.BICUBIC)]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    return T.Compose([*steps, T.Lambda(_to_rgb), T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def eval_transform(spec: InputSpec):
    resize = int(round(spec.size / spec.crop_pct))
    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(spec.size),
            T.Lambda(_to_rgb),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )


def _to_rgb(image):
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
