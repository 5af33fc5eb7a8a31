"""Decode chosen frames of a video with PyAV: seek near them instead of decoding everything, at reduced size.

``read_clip(path, indices, short_side)`` returns the frames at ``indices`` (0-based, in the stream's decode order)
as uint8 (len(indices), H, W, 3), resized by FFmpeg's scaler while converting to RGB (so full-resolution frames
never reach Python). For a constant-rate stream whose frame count is known, it seeks to the key frame before the
first wanted frame and decodes forward from there; otherwise (or if seeking lands wrong) it decodes from the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ...utils.extras import require

SEEK_AFTER_SECONDS = 2.0  # closer to the start, decoding from the start is as fast as seeking


class UnreadableVideo(ValueError):
    """A file that is not a decodable video (corrupt, truncated, no video stream, zero frames)."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float | None
    width: int
    height: int


def _av():
    return require("av", "decoding video")


def probe(path: str | Path, max_frames: int | None = None) -> VideoInfo:
    """Frame count (from the container, else counted by decoding), rate and size of the first video stream.
    With ``max_frames``, a clip whose container states no count is first measured by its packets (demuxed, not
    decoded), and counting stops past the limit: the count returned is then ``max_frames + 1`` at most, and a
    clip of twenty thousand frames is refused in milliseconds rather than after decoding them all."""
    try:
        return _probe(path, max_frames)
    except _av().FFmpegError as error:
        raise UnreadableVideo(f"{path}: {type(error).__name__}: {str(error)[:100]}") from None


def _probe(path: str | Path, max_frames: int | None) -> VideoInfo:
    with _open(path) as container:
        stream = _video_stream(container, path)
        fps = float(stream.average_rate) if stream.average_rate else None
        frames = int(stream.frames or 0)
        if frames <= 0 and max_frames is not None:
            frames = _count_packets(container, stream, max_frames + 1)
            if frames <= max_frames:
                container.seek(0)
                frames = 0  # within the limit: counted exactly, by decoding, as below
        if frames <= 0:
            frames = sum(1 for _ in container.decode(stream))
        if frames <= 0:
            raise UnreadableVideo(f"{path}: no frames")
        return VideoInfo(frames, fps, stream.codec_context.width, stream.codec_context.height)


def _count_packets(container, stream, stop: int) -> int:
    """The stream's packets that carry data (one per frame for video), counted up to ``stop``."""
    count = 0
    for packet in container.demux(stream):
        count += packet.size > 0
        if count >= stop:
            break
    return count


def read_clip(path: str | Path, indices: list[int], short_side: int | None = None) -> np.ndarray:
    try:
        return _read_clip(path, indices, short_side)
    except _av().FFmpegError as error:
        raise UnreadableVideo(f"{path}: {type(error).__name__}: {str(error)[:100]}") from None


def _read_clip(path: str | Path, indices: list[int], short_side: int | None) -> np.ndarray:
    wanted = sorted(set(indices))
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        size = _scaled_size(stream.codec_context.width, stream.codec_context.height, short_side)
        frames = _decode_after_seek(container, stream, wanted, size) if _can_seek(stream, wanted) else None
        if frames is None or len(frames) < len(wanted):
            container.seek(0)
            frames = _decode_sequentially(container, stream, wanted, size)
    missing = [i for i in wanted if i not in frames]
    if len(missing) == len(wanted):
        raise UnreadableVideo(f"{path}: none of frames {wanted[:3]}... could be decoded")
    last = frames[max(frames)]
    return np.stack([frames.get(i, last) for i in indices])  # beyond the end: the last frame repeats


def _open(path):
    """A container from a path or a seekable binary file object (an upload held in memory)."""
    av = _av()
    try:
        if hasattr(path, "read"):
            path.seek(0)
            return av.open(path, mode="r")
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise UnreadableVideo(f"{path}: cannot open ({type(error).__name__}: {str(error)[:100]})") from None


def _video_stream(container, path):
    if not container.streams.video:
        raise UnreadableVideo(f"{path}: no video stream")
    return container.streams.video[0]


def _scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int] | None:
    if not short_side or min(width, height) == short_side:
        return None
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def _to_rgb(frame, size) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1])


def _decode_sequentially(container, stream, wanted: list[int], size) -> dict[int, np.ndarray]:
    frames, targets, last = {}, set(wanted), wanted[-1]
    av = _av()
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index in targets:
                frames[index] = _to_rgb(frame, size)
            if index >= last:
                break
    except (av.FFmpegError, ValueError):  # a truncated file: keep what decoded
        pass
    return frames


def _can_seek(stream, wanted: list[int]) -> bool:
    rate = stream.average_rate
    return bool(rate and stream.frames and stream.time_base and wanted[0] / float(rate) > SEEK_AFTER_SECONDS)


def _decode_after_seek(container, stream, wanted: list[int], size) -> dict[int, np.ndarray] | None:
    """Index frames by their timestamps after seeking; None when timestamps cannot be trusted."""
    rate, base = Fraction(stream.average_rate), Fraction(stream.time_base)
    start = stream.start_time or 0
    target = int((Fraction(wanted[0]) / rate) / base) + start
    frames, targets, last = {}, set(wanted), wanted[-1]
    av = _av()
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            index = round((frame.pts - start) * base * rate)
            if index in targets:
                frames[index] = _to_rgb(frame, size)
            if index >= last:
                break
    except (av.FFmpegError, ValueError):
        return None
    return frames
