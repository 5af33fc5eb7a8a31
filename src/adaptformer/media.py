"""Decoding what users send: images (any Pillow mode, EXIF orientation applied) and video clips (PyAV).

Shared by ``adaptformer predict`` and the server, so both see the same pixels:

* :func:`decode_image` turns bytes or a file into an RGB image. The pixel count is checked on the header, before
  any decoding (a decompression bomb is refused cheaply); EXIF orientation is applied (a phone photo is upright,
  as it was shown to whoever labelled it); 16-bit and 32-bit greyscale (``I;16``, ``I``) and float (``F``) images
  are rescaled to 8 bits from their real range instead of being clipped to white, and transparency is composed
  onto white rather than dropped to whatever colour the hidden pixels hold.
* :class:`Clip` holds an encoded video; :meth:`Clip.tensor` samples and views it as a task's ``InputSpec`` says
  (``spec.frames`` frames ``spec.sampling_rate`` apart around the middle, short side ``spec.resize``, centre crop).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .data.transforms import InputSpec, eval_transform
from .data.video.datasets import VIDEO_SUFFIXES
from .data.video.decode import UnreadableVideo, probe, read_clip
from .data.video.sampling import clip_indices
from .data.video.transforms import VideoTransform
from .errors import AdaptFormerError
from .utils.extras import MissingExtra

DEFAULT_MAX_PIXELS = 40_000_000


class UnreadableMedia(AdaptFormerError):
    """Bytes that are not a decodable image or video."""


class MediaTooLarge(AdaptFormerError):
    """An image with more pixels than allowed, or a clip longer than allowed."""


def decode_image(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB image from encoded bytes or a file (refused in one line when unreadable or too large)."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream) as image:
            if image.width * image.height > max_pixels:  # from the header: nothing decoded yet
                raise MediaTooLarge(f"image of {image.width}x{image.height} pixels; at most {max_pixels}")
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:  # Pillow's own limit, met while reading the header
        raise MediaTooLarge(bomb_message(error, max_pixels)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        if isinstance(error, AdaptFormerError):
            raise
        raise UnreadableMedia(f"not a readable image ({type(error).__name__})") from None


def bomb_message(error: Exception, max_pixels: int) -> str:
    """Pillow's decompression-bomb refusal said with this library's limit (the image's size where Pillow gives it)."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"of {int(found.group(1))} pixels" if found else "too large to decode"
    return f"image {size}; at most {max_pixels}"


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode: wide greyscale rescaled from its range, alpha composed onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = (0.0, 65535.0) if image.mode.startswith("I;16") else (float(values.min()), float(values.max()))
        scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low) * 255.0
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def image_tensor(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """``image`` as the (3, H, W) tensor a task with preprocessing ``spec`` was trained on."""
    if spec.modality != "image":
        raise AdaptFormerError(f"a {spec.modality} task takes {spec.frames}-frame clips, not images")
    return eval_transform(spec)(image)


def looks_like_video(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class Clip:
    """An encoded video in memory (an upload, or a file read once); frames decoded per task spec, on demand."""

    data: bytes
    name: str = "clip"
    max_frames: int = 100_000
    _frames: int | None = field(default=None, repr=False)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> Clip:
        try:
            return cls(Path(path).read_bytes(), Path(path).name, **kwargs)
        except OSError as error:
            raise UnreadableMedia(f"{path}: cannot read ({error.strerror})") from None

    @property
    def frames(self) -> int:
        if self._frames is None:
            try:
                self._frames = probe(io.BytesIO(self.data), self.max_frames).frames
            except MissingExtra:
                raise
            except (UnreadableVideo, OSError, ValueError, RuntimeError) as error:
                raise UnreadableMedia(f"not a readable video ({_short(error)})") from None
            if self._frames > self.max_frames:
                raise MediaTooLarge(f"a clip of more than {self.max_frames} frames (--max-clip-frames)")
        return self._frames

    def tensor(self, spec: InputSpec) -> torch.Tensor:
        """The (3, T, H, W) clip a video task with preprocessing ``spec`` sees: one centre clip, centre crop."""
        if spec.modality != "video":
            raise AdaptFormerError("an image task takes images, not video clips")
        indices = clip_indices("dense", self.frames, spec.frames, spec.sampling_rate or 4, False, 1, None)[0]
        union = sorted(set(indices))
        try:
            decoded = read_clip(io.BytesIO(self.data), union, spec.resize)
        except MissingExtra:
            raise
        except (UnreadableVideo, OSError, ValueError, RuntimeError) as error:
            raise UnreadableMedia(f"not a readable video ({_short(error)})") from None
        by_index = dict(zip(union, decoded, strict=True))
        return VideoTransform(spec, train=False)([np.stack([by_index[i] for i in indices])])


def _short(error: Exception) -> str:
    """The reason without the file name PyAV puts first (an upload has no path worth showing)."""
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith("<") and ": " in text else type(error).__name__
