"""Clips per second through the video input pipeline: decode (PyAV) + sample + augment, with DataLoader workers.

    python benchmarks/video_io.py                          # generated clips (mp4/H.264, webm/VP9, avi/MPEG-4)
    python benchmarks/video_io.py --real ../shared/data/videos   # also real footage from a folder

Each row times ``--clips`` training samples (``--frames`` frames, sampling rate ``--rate``, ``--size`` px multi-scale
crops, as the training loop makes them) through a DataLoader with ``--workers`` processes, after one warm-up
batch. Generated videos are 320x240 at 30 fps, ``--seconds`` long. The figures say whether decoding keeps up with
a training step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adaptformer.data.loading import ShardSampler, make_loader
from adaptformer.data.transforms import InputSpec
from adaptformer.data.video.datasets import ClipOptions, VideoClips
from adaptformer.data.video.decode import probe
from adaptformer.data.video.transforms import VideoTransform

CODECS = {".mp4": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}


def generate(folder: Path, suffix: str, seconds: int, count: int) -> list[Path]:
    import av

    paths = []
    rng = np.random.default_rng(0)
    for k in range(count):
        path = folder / f"clip{k}{suffix}"
        with av.open(str(path), "w") as container:
            stream = container.add_stream(CODECS[suffix], rate=30)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            for t in range(30 * seconds):
                frame = np.roll(base, 3 * t, axis=1)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


def clips_per_second(paths: list[Path], args) -> float:
    spec = InputSpec(size=args.size, frames=args.frames, crop_pct=224 / 256)
    dataset = VideoClips([(str(p), 0) for p in paths], ClipOptions(args.frames, args.rate), train=True)
    dataset.transform = VideoTransform(spec, train=True)
    indices = [k % len(paths) for k in range(args.clips + args.batch)]
    sampler = ShardSampler(len(indices), 1, 0)
    sampler.indices = indices
    loader = make_loader(dataset, args.batch, sampler, args.workers, 0, drop_last=False)
    iterator = iter(loader)
    next(iterator)  # warm-up: workers start, first files open
    began, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += len(batch)
        assert batch.inputs.shape[1:] == (3, args.frames, args.size, args.size)
    return seen / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rate", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--clips", type=int, default=64, help="timed clips per row")
    parser.add_argument("--seconds", type=int, default=4, help="length of each generated video")
    parser.add_argument("--real", default=None, help="a folder of real videos to time too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.frames} frames, rate {args.rate}, {args.size} px, {args.workers} workers, batch {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in CODECS:
            paths = generate(Path(tmp), suffix, args.seconds, 4)
            print(
                f"generated {suffix:<5} 320x240 30 fps {args.seconds} s  {clips_per_second(paths, args):7.1f} clips/s"
            )
    if args.real:
        paths = sorted(p for p in Path(args.real).iterdir() if p.suffix.lower() in (".mp4", ".avi", ".webm", ".mkv"))
        for path in paths:
            info = probe(path)
            rate = clips_per_second([path], args)
            print(f"real {path.name:<22} {info.width}x{info.height} {info.frames} frames  {rate:7.1f} clips/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
