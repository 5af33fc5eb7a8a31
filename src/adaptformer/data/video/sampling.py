"""Which frames make a clip.

* **dense** (Kinetics, HMDB51, most folders): ``num_frames`` frames ``sampling_rate`` apart. Training takes a
  random window; testing takes ``clips`` windows spread evenly over the video.
* **segment** (Something-Something v2, whose actions span the whole video): the video is cut into ``num_frames``
  equal segments and one frame is taken from each, at random when training, at position (c + 0.5) / clips of each
  segment for test clip c.

Indices past the last frame are clamped to it: a clip shorter than asked for repeats its last frame.
"""

from __future__ import annotations

import random

import torch

SAMPLING_MODES = ("dense", "segment")


class TorchRandom(random.Random):
    """``random.Random``'s interface drawing from torch's global generator. Image augmentation draws from it
    too, so the training seed decides every clip window, crop and flip, and a resumed run (which restores that
    generator; DataLoader workers are seeded from it) continues with exactly the draws of an uninterrupted one."""

    def random(self) -> float:
        return float(torch.rand(()))

    def getrandbits(self, k: int) -> int:  # what randint / choice / randrange build on
        bits = 0
        for shift in range(0, k, 62):
            width = min(62, k - shift)
            bits |= int(torch.randint(0, 2**width, ())) << shift
        return bits


def dense_train(total: int, num_frames: int, rate: int, rng: random.Random) -> list[int]:
    span = (num_frames - 1) * rate + 1
    start = rng.randint(0, max(0, total - span))
    return [min(start + k * rate, total - 1) for k in range(num_frames)]


def dense_test(total: int, num_frames: int, rate: int, clips: int) -> list[list[int]]:
    span = (num_frames - 1) * rate + 1
    room = max(0, total - span)
    starts = [round(room * c / (clips - 1)) if clips > 1 else room // 2 for c in range(clips)]
    return [[min(s + k * rate, total - 1) for k in range(num_frames)] for s in starts]


def segment_train(total: int, num_frames: int, rng: random.Random) -> list[int]:
    length = total / num_frames
    return [min(int(length * k + rng.random() * length), total - 1) for k in range(num_frames)]


def segment_test(total: int, num_frames: int, clips: int) -> list[list[int]]:
    length = total / num_frames
    return [[min(int(length * (k + (c + 0.5) / clips)), total - 1) for k in range(num_frames)] for c in range(clips)]


def clip_indices(mode: str, total: int, num_frames: int, rate: int, train: bool, clips: int, rng) -> list[list[int]]:
    """One index list per clip: one clip when training, ``clips`` when testing."""
    if mode == "segment":
        return [segment_train(total, num_frames, rng)] if train else segment_test(total, num_frames, clips)
    return [dense_train(total, num_frames, rate, rng)] if train else dense_test(total, num_frames, rate, clips)
