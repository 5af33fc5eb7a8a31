"""Video decoding, sampling, transforms and datasets on real encoded clips in the official layouts."""

import random

import numpy as np
import pytest
import torch

from adaptformer import AdaptFormerError
from adaptformer.data.loading import ShardSampler, make_loader
from adaptformer.data.registry import build_split
from adaptformer.data.transforms import InputSpec
from adaptformer.data.video.decode import UnreadableVideo, probe, read_clip
from adaptformer.data.video.sampling import dense_test, dense_train, segment_test, segment_train
from adaptformer.data.video.transforms import VideoTransform
from formats import video_frames, write_hmdb51, write_ssv2, write_video

SPEC = InputSpec(size=32, frames=4, crop_pct=1.0)


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi"])
def test_decoded_frames_are_the_asked_ones(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", video_frames(24))
    assert probe(path).frames == 24
    clip = read_clip(path, [0, 5, 23, 30])  # 30 is past the end: the last frame repeats
    red = clip[..., 0].reshape(4, -1).mean(1)
    assert np.allclose(red[:3], [0, 40, 184], atol=6) and red[3] == red[2]
    assert clip.shape == (4, 48, 64, 3)
    small = read_clip(path, [2], short_side=24)
    assert small.shape == (1, 24, 32, 3)  # scaled while converting, aspect ratio kept


def test_seeking_gives_the_same_frames_as_decoding_from_the_start(tmp_path):
    path = write_video(tmp_path / "long.mp4", video_frames(30 * 4 + 5), fps=30)  # > 2 s: the seek path
    far = [100, 104, 108]
    from adaptformer.data.video import decode

    sequential = decode._decode_sequentially  # decode from the start, for reference
    import av

    with av.open(str(path)) as container:
        reference = sequential(container, container.streams.video[0], far, None)
    clip = read_clip(path, far)
    assert all(np.array_equal(clip[k], reference[i]) for k, i in enumerate(far))


def test_corrupt_and_empty_files_are_unreadable(tmp_path):
    good = write_video(tmp_path / "good.mp4", video_frames(16)).read_bytes()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(good[:48] + bytes(4096))
    (tmp_path / "text.avi").write_text("not a video")
    for name in ("zero.mp4", "garbage.mp4", "text.avi"):
        with pytest.raises(UnreadableVideo, match=name):
            probe(tmp_path / name)


def test_sampling_windows_and_segments():
    rng = random.Random(0)
    clip = dense_train(100, 8, 4, rng)
    assert len(clip) == 8 and all(b - a == 4 for a, b in zip(clip, clip[1:], strict=False)) and clip[-1] <= 99
    assert dense_train(10, 8, 4, rng) == [0, 4, 8, 9, 9, 9, 9, 9]  # short video: the last frame repeats
    first, last = dense_test(100, 8, 4, 3)[0], dense_test(100, 8, 4, 3)[-1]
    assert first[0] == 0 and last[-1] == 99
    segments = segment_train(80, 8, rng)
    assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(segments))
    assert segment_test(80, 8, 2) == [[2, 12, 22, 32, 42, 52, 62, 72], [7, 17, 27, 37, 47, 57, 67, 77]]


def test_transforms_give_clips_and_view_stacks():
    clip = video_frames(4, height=40, width=60)
    train = VideoTransform(SPEC, train=True)
    out = train([clip])
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
    three = VideoTransform(SPEC, train=False, crops=3)
    shifted = np.stack(
        [
            np.asarray(
                torch.nn.functional.interpolate(torch.from_numpy(f).permute(2, 0, 1)[None].float(), size=(32, 48))[0]
                .permute(1, 2, 0)
                .byte()
            )
            for f in clip
        ]
    )
    views = three([shifted, shifted])  # 2 temporal clips x 3 spatial crops
    assert views.shape == (6, 3, 4, 32, 32)
    assert not torch.equal(views[0], views[2]) and torch.equal(views[0], views[3])


def test_ssv2_official_layout(tmp_path):
    write_ssv2(tmp_path / "ssv2")
    train = build_split("ssv2", tmp_path / "ssv2", True, VideoTransform(SPEC, True, hflip=0.0), num_frames=4)
    test = build_split("ssv2", tmp_path / "ssv2", False, VideoTransform(SPEC, False), num_frames=4, test_clips=2)
    assert train.classes == ["Pushing something from left to right", "Pushing something from right to left"]
    assert len(train.dataset) == 4 and len(test.dataset) == 2 and train.dataset.options.mode == "segment"
    clip, label = train.dataset[0]
    assert clip.shape == (3, 4, 32, 32) and label == 0
    views, _ = test.dataset[1]
    assert views.shape == (2, 3, 4, 32, 32)


def test_ssv2_unknown_template_names_the_entry(tmp_path):
    root = write_ssv2(tmp_path / "ssv2")
    (root / "labels" / "train.json").write_text('[{"id": "1", "template": "Dropping [something]"}]')
    with pytest.raises(AdaptFormerError, match=r"train.json: entry 1: template 'Dropping something' is not in"):
        build_split("ssv2", root, True)


def test_hmdb51_splits_and_bad_lines(tmp_path):
    root = write_hmdb51(tmp_path / "hmdb")
    train = build_split("hmdb51", root, True, VideoTransform(SPEC, True), num_frames=4, sampling_rate=2, split=2)
    test = build_split("hmdb51", root, False, VideoTransform(SPEC, False), num_frames=4, split=2)
    assert train.classes == ["brush_hair", "cartwheel"] and (len(train.dataset), len(test.dataset)) == (4, 2)
    assert train.dataset[3][0].shape == (3, 4, 32, 32) and train.dataset[3][1] == 1
    (root / "testTrainMulti_7030_splits" / "cartwheel_test_split1.txt").write_text("cartwheel_clip_0.avi\n")
    with pytest.raises(AdaptFormerError, match=r"cartwheel_test_split1.txt:1: expected"):
        build_split("hmdb51", root, True, split=1)
    with pytest.raises(AdaptFormerError, match="--split"):
        build_split("hmdb51", root, True, split=4)


def test_video_list_with_label_map_and_errors(tmp_path):
    write_video(tmp_path / "videos" / "a clip.mp4", video_frames(12))
    write_video(tmp_path / "videos" / "b.mp4", video_frames(12, seed=1))
    (tmp_path / "map.txt").write_text("jump\nrun\n")
    (tmp_path / "train.txt").write_text("videos/a clip.mp4 0\nvideos/b.mp4 run\n")
    split = build_split(
        "videolist", tmp_path, True, train_list=str(tmp_path / "train.txt"), label_map=str(tmp_path / "map.txt")
    )
    assert split.classes == ["jump", "run"] and [s[1] for s in split.dataset.samples] == [0, 1]
    assert split.dataset.samples[0][0].endswith("videos/a clip.mp4")
    (tmp_path / "bad.txt").write_text("videos/b.mp4 1\nvideos/b.mp4 7\n")
    with pytest.raises(AdaptFormerError, match=r"bad.txt:2: label 7 is not in the label map"):
        build_split(
            "videolist", tmp_path, True, train_list=str(tmp_path / "bad.txt"), label_map=str(tmp_path / "map.txt")
        )
    (tmp_path / "bad.txt").write_text("onlyonefield\n")
    with pytest.raises(AdaptFormerError, match=r"bad.txt:1: expected '<video path> <label>'"):
        build_split("videolist", tmp_path, True, train_list=str(tmp_path / "bad.txt"))


def test_videofolder_and_unreadable_videos_are_skipped_by_the_loader(tmp_path):
    for c in ("left", "right"):
        for j in range(5):
            write_video(tmp_path / "vf" / c / f"{j}.mp4", video_frames(10, seed=j))
    (tmp_path / "vf" / "left" / "1.mp4").write_bytes(b"\x00" * 2048)  # corrupt
    split = build_split("videofolder", tmp_path / "vf", True, VideoTransform(SPEC, False), num_frames=4)
    assert len(split.dataset) == 8 and split.classes == ["left", "right"]
    loader = make_loader(split.dataset, 4, ShardSampler(8, 1, 0), 0, 0, drop_last=False)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 7 and sum(len(b.skipped) for b in batches) == 1
    assert batches[0].inputs.shape[1:] == (3, 4, 32, 32) and batches[0].skipped[0].path.endswith("1.mp4")
