"""``moving-digits``: a small labelled video task generated offline from scikit-learn's real digit images.

Each clip shows one digit (8x8, from the fixed 80/20 split of ``digits``) on a 16x16 frame, moving by 2 pixels a
frame and wrapping around the edges. The label is the **axis of motion**: still, horizontal, vertical or diagonal
(the direction's sign is random). Because the digit wraps around, every single frame is a digit at a uniformly
random position whatever the class: one frame says nothing about the label, only the motion does. (The sign is
not asked for on purpose: a frozen image backbone inflated to video sees its time steps with identical position
embeddings, so it is blind to the order of frames, though not to motion within a tubelet.)
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from ..registry import DatasetEntry, Split, register_dataset

CLASSES = ["still", "horizontal", "vertical", "diagonal"]
VELOCITY = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)}  # (dy, dx) per class, before the random sign
CANVAS, STEP = 16, 2


def moving_digit(digit: np.ndarray, label: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, 16, 16, 3) uint8: ``digit`` (8x8x3) moving along the class's axis with wrap-around."""
    canvas = np.zeros((CANVAS, CANVAS, 3), dtype=np.uint8)
    canvas[: digit.shape[0], : digit.shape[1]] = digit
    dy, dx = VELOCITY[label]
    sign_y, sign_x = rng.choice([-1, 1], size=2)
    y0, x0 = rng.integers(0, CANVAS, size=2)
    return np.stack(
        [
            np.roll(canvas, (y0 + sign_y * dy * STEP * t, x0 + sign_x * dx * STEP * t), axis=(0, 1))
            for t in range(frames)
        ]
    )


class MovingDigits(Dataset):
    def __init__(self, images: np.ndarray, train: bool, frames: int, test_clips: int):
        self.images, self.frames, self.test_clips = images, frames, test_clips
        offset = 0 if train else 1_000_000
        self.labels = [int(np.random.default_rng(offset + i).integers(0, len(CLASSES))) for i in range(len(images))]
        self.seeds = [offset + i for i in range(len(images))]
        self.samples = [(f"moving-digits/{i}", label) for i, label in enumerate(self.labels)]
        self.train = train
        self.transform = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        rng = np.random.default_rng(self.seeds[index] + 7)  # the same clip every time: a fixed dataset
        clip = moving_digit(self.images[index], self.labels[index], self.frames, rng)
        clips = [clip] * (1 if self.train else self.test_clips)
        return (self.transform(clips) if self.transform else clips), self.labels[index]


def _build(root, train, verify, download, num_frames=8, test_clips=1, **unused) -> Split:
    from ..registry import get_dataset

    digits = get_dataset("digits").build(None, train, verify, download)
    return Split(MovingDigits(digits.dataset.images, train, num_frames, test_clips), list(CLASSES))


register_dataset(
    DatasetEntry("moving-digits", _build, False, "video", "digits moving along an axis, 16x16 (offline)", hflip=False)
)
