"""Video data: PyAV decoding, clip sampling, clip transforms and the video datasets (registered on import)."""

from . import datasets, synthetic  # noqa: F401  (registers ssv2, hmdb51, videolist, videofolder, moving-digits)
from .transforms import VideoTransform

__all__ = ["VideoTransform"]
