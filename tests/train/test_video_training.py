"""Video training end to end through the CLI: every method, test views, eval from the task file, inflation."""

import json

import pytest

from adaptformer.cli import main
from adaptformer.runtime.metrics import read_metrics
from adaptformer.tasks import read_task
from formats import write_hmdb51, write_ssv2

TINY_VIDEO = json.dumps(dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=16))


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    return write_ssv2(tmp_path_factory.mktemp("ssv2") / "ssv2")


def train_args(data, out, dataset="ssv2", method="adaptformer", model="videomae_base_patch16_224", extra=()):
    args = ["train", "--dataset", dataset, "--data-root", str(data), "--model", model]
    if model.startswith("videomae"):  # tiny and random; the embedded backbone ships its weights
        args += ["--model-kwargs", TINY_VIDEO, "--no-pretrained"]
    args += ["--method", method, "--num-frames", "4", "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "2"]
    args += ["--effective-batch", "2", "--lr", "0.05", "--workers", "0", "--precision", "fp32", "--no-tensorboard"]
    return [*args, "--out", str(out), *extra]


@pytest.mark.parametrize("method", ["adaptformer", "linear", "vpt", "full"])
def test_every_method_trains_on_ssv2(ssv2, tmp_path, capsys, method):
    assert (
        main(train_args(ssv2, tmp_path / "run", method=method, extra=["--test-clips", "2", "--test-crops", "3"])) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["classes"] == 2 and summary["trainable"] > 0
    meta, _ = read_task(tmp_path / "run" / "best.safetensors")
    assert meta["preprocessing"]["frames"] == 4 and meta["preprocessing"]["modality"] == "video"
    assert meta["backbone"]["kwargs"]["num_frames"] == 4 and meta["method"]["method"] == method


def test_eval_of_a_video_task_reproduces_the_logged_top1(ssv2, tmp_path, capsys):
    """Views (2 clips x 3 crops) and frames come from the task file; the score equals the one logged in training.
    The run's random backbone is re-created from the same seed, which the fingerprint check confirms."""
    import torch

    from adaptformer import apply_task, create_backbone
    from adaptformer.inference import LoadedTask, evaluate_task
    from adaptformer.tasks import preprocessing_of

    assert main(train_args(ssv2, tmp_path / "run", extra=["--test-clips", "2", "--test-crops", "3"])) == 0
    meta, _ = read_task(tmp_path / "run" / "best.safetensors")
    logged = {r["epoch"]: r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "test_top1" in r}
    torch.manual_seed(0)
    backbone = create_backbone("videomae_base_patch16_224", pretrained=False, **json.loads(TINY_VIDEO), num_frames=4)
    model = apply_task(backbone, tmp_path / "run" / "best.safetensors", check_backbone=True).eval()
    loaded = LoadedTask(model, meta["classes"], preprocessing_of(meta, model), torch.device("cpu"), "fp32")
    result = evaluate_task(loaded, "ssv2", str(ssv2), workers=0, test_clips=2, test_crops=3)
    assert result["top1"] == logged[meta["extra"]["epoch"]]["test_top1"] and result["samples"] == 2


def test_image_backbone_is_inflated_for_a_video_dataset(tmp_path, capsys):
    data = write_hmdb51(tmp_path / "hmdb")
    args = train_args(data, tmp_path / "run", dataset="hmdb51", model="adaptformer/vit-tiny-cifar10")
    assert main([*args, "--sampling-rate", "2", "--split", "3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["classes"] == 2
    meta, _ = read_task(tmp_path / "run" / "last.safetensors")
    assert meta["backbone"]["name"] == "adaptformer/vit-tiny-cifar10" and meta["backbone"]["kwargs"] == {
        "num_frames": 4
    }
    assert meta["preprocessing"]["sampling_rate"] == 2
    assert (
        main(
            [
                "eval",
                "--task",
                str(tmp_path / "run" / "last.safetensors"),
                "--dataset",
                "hmdb51",
                "--data-root",
                str(data),
                "--hmdb-split",
                "3",
                "--workers",
                "0",
                "--json",
            ]
        )
        == 0
    )  # the embedded weights: fingerprint ok
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 2


def test_video_options_are_checked(ssv2, tmp_path, capsys):
    assert main(train_args(ssv2, tmp_path / "run", extra=["--test-crops", "2"])) == 2
    assert "--test-crops: expected 1 or 3" in capsys.readouterr().err
    assert main(train_args(ssv2, tmp_path / "run2", extra=["--num-frames", "3"])) == 2
    assert "multiples of the tubelet" in capsys.readouterr().err


def test_corrupt_videos_are_skipped_counted_and_logged_in_training(tmp_path, capsys):
    data = write_hmdb51(tmp_path / "hmdb", per_class=4)
    broken = data / "brush_hair" / "brush_hair_clip_0.avi"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated: no decodable frame
    assert main(train_args(data, tmp_path / "run", dataset="hmdb51")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped_images"] >= 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "skipped unreadable file" in log and "brush_hair_clip_0.avi" in log


def test_image_and_video_tasks_train_on_one_video_backbone_and_share_a_bank(ssv2, tmp_path, capsys):
    """An image dataset on a video backbone: each image is a static clip (the image in every frame); the task
    file records an image task on the video backbone's weights, and it shares one bank with a video task."""
    import torch
    from PIL import Image

    from adaptformer import AdaptedModel, apply_task, create_backbone
    from adaptformer.bank import TaskBank
    from adaptformer.media import Clip
    from formats import video_frames, write_cifar10, write_video

    cifar = write_cifar10(tmp_path / "cifar")
    assert main(train_args(cifar, tmp_path / "images", dataset="cifar10", extra=["--no-verify"])) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["classes"] == 10
    meta, _ = read_task(tmp_path / "images" / "last.safetensors")
    assert meta["preprocessing"]["modality"] == "image" and meta["preprocessing"]["frames"] == 1
    assert meta["backbone"]["kwargs"]["num_frames"] == 4  # the video backbone, built for the video tasks' frames
    assert main(train_args(ssv2, tmp_path / "clips")) == 0
    capsys.readouterr()
    torch.manual_seed(0)  # the runs' random backbone again (the fingerprint check confirms it)
    backbone = create_backbone("videomae_base_patch16_224", pretrained=False, **json.loads(TINY_VIDEO), num_frames=4)
    files = [f"cifar={tmp_path / 'images' / 'last.safetensors'}", f"ssv2={tmp_path / 'clips' / 'last.safetensors'}"]
    bank = TaskBank(AdaptedModel(backbone), torch.device("cpu"), "fp32")
    for text in files:
        bank.add(text)  # refused in one line if the image task did not fit the video backbone
    assert bank.tasks == ["cifar", "ssv2"]
    clip = Clip.from_file(write_video(tmp_path / "clip.mp4", video_frames(12, height=32, width=32, motion=2)))
    image = Image.fromarray(video_frames(1, height=32, width=32)[0])
    results = bank.predict([image, clip], top_k=2)
    assert [(r["index"], r["task"]) for r in results] == [(0, "cifar"), (1, "ssv2")]
    # the bank's answer for the image equals the task's own model on the static clip written out by hand
    torch.manual_seed(0)
    model = apply_task(
        create_backbone("videomae_base_patch16_224", pretrained=False, **json.loads(TINY_VIDEO), num_frames=4),
        tmp_path / "images" / "last.safetensors",
    ).eval()
    row = bank.input_rows(image, ["cifar"])[0]
    with torch.no_grad():
        direct = model(row[None, :, None].expand(-1, -1, 4, -1, -1).contiguous()).softmax(-1)[0]
    assert abs(results[0]["top_k"][0]["prob"] - float(direct.max())) < 1e-5
