"""Clip transforms: the video recipe's multi-scale crops for training, centre or three crops for testing.

Clips arrive as uint8 (T, H, W, 3) arrays, already resized by the decoder so that the short side is
``decode_short_side``; they leave as normalised float tensors (C, T, H, W), or (V, C, T, H, W) when a sample has
V test views (clips x crops), whose logits evaluation averages.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..transforms import INTERPOLATIONS, InputSpec
from .sampling import TorchRandom

MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)


class VideoTransform:
    def __init__(self, spec: InputSpec, train: bool, hflip: float = 0.5, crops: int = 1):
        self.spec, self.train, self.hflip, self.crops = spec, train, hflip, crops
        self.mean = torch.tensor(spec.mean).view(3, 1, 1, 1)
        self.std = torch.tensor(spec.std).view(3, 1, 1, 1)
        # training crops are taken from a frame of short side `resize` (256 for 224); test views at `size`
        self.decode_short_side = spec.resize if train or crops == 1 else spec.size
        self.rng = TorchRandom()

    def __call__(self, clips: list[np.ndarray]) -> torch.Tensor:
        views = [view for clip in clips for view in self._views(torch.from_numpy(clip).permute(0, 3, 1, 2))]
        tensors = [self._normalize(v) for v in views]
        return tensors[0] if len(tensors) == 1 else torch.stack(tensors)

    def _views(self, clip: torch.Tensor) -> list[torch.Tensor]:  # clip: (T, 3, H, W) uint8
        size = self.spec.size
        if self.train:
            clip = self._multi_scale_crop(clip)
            if self.rng.random() < self.hflip:
                clip = clip.flip(-1)
            return [clip]
        if self.crops == 1:
            return [TF.center_crop(clip, [size, size])]
        return [self._crop_along_long_side(clip, k) for k in range(self.crops)]

    def _multi_scale_crop(self, clip: torch.Tensor) -> torch.Tensor:
        """TSN/VideoMAE multi-scale crop: width and height each a scale of the short side (at most one scale step
        apart), a random position, then resized to the input size."""
        height, width = clip.shape[-2:]
        base = min(height, width)
        sizes = [int(base * s) for s in MULTI_SCALES]
        pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= 1]
        crop_h, crop_w = self.rng.choice(pairs)
        top = self.rng.randint(0, height - crop_h)
        left = self.rng.randint(0, width - crop_w)
        mode = INTERPOLATIONS[self.spec.interpolation]
        return TF.resized_crop(
            clip, top, left, crop_h, crop_w, [self.spec.size] * 2, interpolation=mode, antialias=True
        )

    def _crop_along_long_side(self, clip: torch.Tensor, k: int) -> torch.Tensor:
        size = self.spec.size
        height, width = clip.shape[-2:]
        if width >= height:
            left = round((width - size) * k / (self.crops - 1))
            return TF.crop(clip, (height - size) // 2, left, size, size)
        top = round((height - size) * k / (self.crops - 1))
        return TF.crop(clip, top, (width - size) // 2, size, size)

    def _normalize(self, clip: torch.Tensor) -> torch.Tensor:  # (T, 3, H, W) uint8 -> (3, T, H, W) float
        clip = clip.permute(1, 0, 2, 3).float().div_(255)
        return (clip - self.mean) / self.std
