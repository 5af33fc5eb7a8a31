"""Video data: PyAV decoding, clip sampling, clip transforms and the video datasets (registered on import)."""

from . import datasets  # noqa: F401  (registers ssv2, hmdb51, videolist, videofolder)
from .transforms import VideoTransform

__all__ = ["VideoTransform"]
