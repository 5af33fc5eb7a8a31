"""What users send, decoded as they meant it: 16-bit and float images, EXIF orientation, transparency, clips."""

import io

import numpy as np
import pytest
from PIL import Image

from adaptformer.data.transforms import InputSpec
from adaptformer.media import Clip, MediaTooLarge, UnreadableMedia, decode_image
from formats import video_frames, write_video


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_a_16_bit_greyscale_png_keeps_its_shades():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    wide = Image.fromarray(ramp)
    assert wide.mode.startswith("I;16")
    rgb = np.asarray(decode_image(encoded(wide)))
    assert rgb.shape == (64, 64, 3) and len(np.unique(rgb)) > 200  # not all white (the old answer)
    expected = np.round(ramp / 65535 * 255).astype(np.int16)
    assert np.abs(rgb[..., 0].astype(np.int16) - expected).max() <= 1


def test_exif_orientation_is_applied():
    tall = np.zeros((40, 20, 3), np.uint8)
    tall[:10] = 255  # white band at the top
    image = Image.fromarray(tall)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    shown = decode_image(encoded(image, "JPEG", exif=exif, quality=95))
    assert shown.size == (40, 20)  # width and height swapped, as the photo is displayed
    assert np.asarray(shown)[:, -10:].mean() > 200  # the top band is now on the right


def test_transparency_is_composed_onto_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black
    assert np.asarray(decode_image(encoded(rgba))).min() == 255


def test_limits_and_garbage_are_refused_in_one_line():
    with pytest.raises(MediaTooLarge, match="pixels"):
        decode_image(encoded(Image.new("L", (300, 300))), max_pixels=1000)
    with pytest.raises(UnreadableMedia, match="not a readable image"):
        decode_image(b"nothing like an image")
    with pytest.raises(UnreadableMedia, match="not a readable video"):
        Clip(b"nothing like a video").tensor(InputSpec(size=32, frames=4))


def test_a_clip_in_memory_is_sampled_as_the_task_says(tmp_path):
    path = write_video(tmp_path / "a.mp4", video_frames(24))
    clip = Clip.from_file(path)
    spec = InputSpec(size=32, frames=4, sampling_rate=2, crop_pct=1.0)
    tensor = clip.tensor(spec)
    assert clip.frames == 24 and tuple(tensor.shape) == (3, 4, 32, 32)
    red = tensor[0, :, 16, 16]  # the red level encodes the frame index: 2 frames apart, increasing
    assert bool((red[1:] > red[:-1]).all())
    with pytest.raises(MediaTooLarge, match="frames"):
        Clip(path.read_bytes(), max_frames=10).tensor(spec)


def matroska_clip(frames: int, side: int = 32) -> bytes:
    """An MKV of ``frames`` frames: Matroska states no frame count, so a reader must find it out."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), k % 255, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def test_a_clip_over_the_frame_limit_is_refused_from_its_packets_without_decoding_them(monkeypatch):
    import av

    from adaptformer.data.video import decode

    data = matroska_clip(2000)
    decoded = []
    original = av.container.InputContainer.decode

    def counting(container, *args, **kwargs):
        decoded.append(1)
        return original(container, *args, **kwargs)

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    assert decode.probe(io.BytesIO(data), max_frames=100).frames == 101  # counting stopped past the limit
    with pytest.raises(MediaTooLarge, match=r"^a clip of more than 100 frames \(--max-clip-frames\)$"):
        Clip(data, "x.mkv", max_frames=100).frames  # noqa: B018
    assert decoded == []  # nothing was decoded to refuse it
    within = Clip(matroska_clip(40), "y.mkv", max_frames=100)
    assert within.frames == 40 and decoded  # within the limit the count is exact (decoded)
