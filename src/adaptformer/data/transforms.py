"""Preprocessing: the :class:`InputSpec` a task is trained with, and the image transforms built from it.

Train: RandomResizedCrop(size, interpolation) + horizontal flip. Eval: Resize(size / crop_pct) + CenterCrop(size).
For ViT-B at 224 px with crop_pct 0.875 that is exactly Resize(256) + CenterCrop(224), ImageNet mean/std. With
``resize_mode="squash"`` the eval transform is Resize((size, size)) instead, the whole image with its aspect
ratio changed and nothing cropped (the VTAB-1k reference loaders' preprocessing).
The spec is stored in every task file, so evaluation and prediction preprocess exactly as training did.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from torchvision import transforms as T

from ..errors import AdaptFormerError
from ..utils.options import is_int

TRAIN_CROPS = ("random_resized", "pad")  # RandomResizedCrop, or the small-image recipe: resize, pad, random crop
RESIZE_MODES = ("crop", "squash")  # short side + centre crop, or both sides to the input size
INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """Everything that turns a decoded image (or clip) into the tensor a task saw in training."""

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    frames: int = 1  # > 1 for video clips: inputs are (C, T, H, W)
    sampling_rate: int | None = None  # video: frames between the sampled ones (dense sampling)
    resize_mode: str = "crop"  # eval: "crop" (short side, centre crop) or "squash" (both sides, no crop)

    @property
    def modality(self) -> str:
        return "video" if self.frames > 1 else "image"

    @property
    def resize(self) -> int:
        """The short side before the centre crop at evaluation."""
        return int(round(self.size / self.crop_pct))

    @property
    def sample_shape(self) -> list[int]:
        """One input's shape: (3, H, W), or (3, T, H, W) for a clip."""
        if self.frames > 1:
            return [3, self.frames, self.size, self.size]
        return [3, self.size, self.size]

    @property
    def input_ndim(self) -> int:
        """Dimensions of one batch of inputs: (B, C, H, W) or (B, C, T, H, W); one more with test views."""
        return 4 if self.frames == 1 else 5

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "input_size": [3, self.size, self.size],
            "frames": self.frames,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            **({"sampling_rate": self.sampling_rate} if self.sampling_rate else {}),
            **({"resize_mode": self.resize_mode} if self.resize_mode != "crop" else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(
            size=int(data["input_size"][-1]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            crop_pct=float(data["crop_pct"]),
            interpolation=data.get("interpolation", "bicubic"),
            frames=int(data.get("frames", 1)),
            sampling_rate=data.get("sampling_rate"),
            resize_mode=data.get("resize_mode", "crop"),  # files written before the option: crop
        )

    @classmethod
    def from_pretrained_cfg(cls, cfg: dict[str, Any], size: int | None = None, frames: int = 1) -> InputSpec:
        """A backbone's preprocessing from timm's ``pretrained_cfg`` and the input size it was built for (which
        may differ from the pretrained one: ``img_size=16``). Backbones get theirs through their family
        (``backbones/families.py``)."""
        interpolation = cfg.get("interpolation", "bicubic")
        return cls(
            size=int(size or cfg.get("input_size", (3, 224, 224))[-1]),
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
            interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
            frames=int(frames),
        )

    def replace(self, **changes: Any) -> InputSpec:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def __post_init__(self) -> None:
        if not is_int(self.size, 1) or self.size > 8192:
            raise AdaptFormerError(f"input_size: expected a side of 1-8192 pixels, got {self.size!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise AdaptFormerError(f"{name}: expected three finite numbers (R, G, B), got {list(values)!r}")
        if not all(v > 0 for v in self.std):
            raise AdaptFormerError(f"std: expected three positive numbers, got {list(self.std)!r}")
        if not is_int(self.frames, 1) or self.frames > 1024:
            raise AdaptFormerError(f"frames: expected 1-1024 frames, got {self.frames!r}")
        rate = self.sampling_rate
        if rate is not None and not is_int(rate, 1):
            raise AdaptFormerError(f"sampling_rate: expected a positive integer, got {rate!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise AdaptFormerError(
                f"interpolation: expected one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise AdaptFormerError(f"resize_mode: expected one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        if not 0 < self.crop_pct <= 1:
            raise AdaptFormerError(f"crop_pct: expected a fraction in (0, 1], got {self.crop_pct!r}")


def train_transform(
    spec: InputSpec, hflip: float = 0.5, scale_min: float = 0.08, augment: bool = True, crop: str = "random_resized"
):
    """``crop="pad"`` is the recipe small images train with (CIFAR's): the image resized to the input size, padded
    by an eighth of it on every side and randomly cropped back, so nothing is zoomed away."""
    if not augment:
        return eval_transform(spec)
    mode = INTERPOLATIONS[spec.interpolation]
    if crop == "pad":
        steps = [T.Resize((spec.size, spec.size), interpolation=mode), T.RandomCrop(spec.size, padding=spec.size // 8)]
    else:
        steps = [T.RandomResizedCrop(spec.size, scale=(scale_min, 1.0), interpolation=mode)]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    return T.Compose([*steps, T.Lambda(_to_rgb), T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def eval_transform(spec: InputSpec):
    mode = INTERPOLATIONS[spec.interpolation]
    if spec.resize_mode == "squash":
        resize = [T.Resize((spec.size, spec.size), interpolation=mode)]
    else:
        resize = [T.Resize(spec.resize, interpolation=mode), T.CenterCrop(spec.size)]
    return T.Compose(
        [
            *resize,
            T.Lambda(_to_rgb),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )


def _to_rgb(image):
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
