"""Video tasks served and predicted: a clip upload (multipart ``file``, as for images) goes through the task's
frames and sampling; an image sent to a video task gets a clear 422; ``adaptformer predict`` takes clips; an image
task trained on the same video backbone (images as static clips) shares the server with the video tasks."""

import json

import httpx
import numpy as np
import pytest
import torch
from launch import start_server, stop_server
from PIL import Image

import adaptformer
from adaptformer.bank import TaskBank
from adaptformer.cli import main
from adaptformer.media import Clip
from formats import video_frames, write_video

MODEL = "adaptformer/vit-tiny-cifar10"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("video-serving")
    for seed, name in enumerate(("actions", "gestures")):
        torch.manual_seed(seed)
        model = adaptformer.create_model(MODEL, "adaptformer", num_classes=3, timm_kwargs={"num_frames": 4})
        adaptformer.save_task(model, root / "tasks" / f"{name}.safetensors")
    torch.manual_seed(2)
    model = adaptformer.create_model(MODEL, "adaptformer", num_classes=2, timm_kwargs={"num_frames": 4})
    still = model.input_spec().replace(frames=1)  # an image task on the video backbone
    adaptformer.save_task(model, root / "tasks" / "scenes.safetensors", preprocessing=still)
    clip = write_video(root / "clip.mp4", video_frames(20, motion=3))
    image = root / "still.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    return root, clip, image


def test_clips_are_served_and_equal_the_library(video):
    root, clip, image = video
    process, url = start_server(["--task-dir", str(root / "tasks"), "--precision", "fp32"])
    try:
        bank = TaskBank.open([], str(root / "tasks"), device="cpu", precision="fp32")
        for upload, media in (("clip.mp4", Clip.from_file(clip)), ("still.png", Image.open(image))):
            reference = bank.predict([media], top_k=3)
            path = clip if upload.endswith(".mp4") else image
            answer = httpx.post(f"{url}/predict?top_k=3", files={"file": (upload, path.read_bytes())}, timeout=60)
            assert answer.status_code == 200, answer.text
            results = answer.json()["results"]
            want_tasks = ["actions", "gestures"] if upload.endswith(".mp4") else ["scenes"]
            assert [r["task"] for r in results] == want_tasks  # clips to the video tasks, images to the image one
            for got, want in zip(results, reference, strict=True):
                assert got["task"] == want["task"] and [t["label"] for t in got["top_k"]] == [
                    t["label"] for t in want["top_k"]
                ]
                assert all(abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(got["top_k"], want["top_k"], strict=True))
        still = httpx.post(f"{url}/predict/actions", files={"file": ("still.png", image.read_bytes())}, timeout=30)
        assert still.status_code == 422 and "send it a video clip, not an image" in still.json()["detail"]
        wrong = httpx.post(f"{url}/predict/scenes", files={"file": ("clip.mp4", clip.read_bytes())}, timeout=30)
        assert wrong.status_code == 422 and "send it an image, not a video clip" in wrong.json()["detail"]
        videos = httpx.post(
            f"{url}/predict?tasks=actions,gestures", files={"file": ("still.png", image.read_bytes())}, timeout=30
        )
        assert videos.status_code == 422 and "a video task; send it a video clip" in videos.json()["detail"]
        junk = httpx.post(f"{url}/predict/actions", files={"file": ("x.mp4", b"\0\1" * 500)}, timeout=30)
        assert junk.status_code == 415 and "not a readable image or video" in junk.json()["detail"]
    finally:
        stop_server(process)


def test_predict_takes_clips_for_video_tasks(video, capsys):
    root, clip, image = video
    assert main(["predict", "--task-dir", str(root / "tasks"), str(clip), str(image), "--json", "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_file = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)
    assert [r["task"] for r in by_file[str(clip)]] == ["actions", "gestures"]
    assert [r["task"] for r in by_file[str(image)]] == ["scenes"]  # the image task on the same video backbone
