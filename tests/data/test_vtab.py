"""VTAB-1k in its distributed layout: the 19 tasks and their groups, the protocol's splits and preprocessing,
and one-line errors for missing or malformed list files and images."""

import json

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from adaptformer import AdaptFormerError
from adaptformer.cli import main
from adaptformer.data.registry import build_split, dataset_names
from adaptformer.data.transforms import InputSpec, eval_transform
from adaptformer.data.vtab import VTAB_GROUP_OF, VTAB_GROUPS, VTAB_TASKS
from adaptformer.tasks import read_task
from adaptformer.train.config import TrainConfig
from formats import write_vtab
from training_helpers import tiny_train_values

NATURAL = ["cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"]
SPECIALIZED = ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]
STRUCTURED = ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori"]
STRUCTURED += ["smallnorb_azi", "smallnorb_ele"]


def test_the_19_tasks_and_their_groups():
    assert list(VTAB_GROUPS) == ["natural", "specialized", "structured"]
    assert [list(VTAB_GROUPS[g]) for g in VTAB_GROUPS] == [NATURAL, SPECIALIZED, STRUCTURED]
    assert len(VTAB_TASKS) == 19 and VTAB_GROUP_OF["kitti"] == "structured"
    assert VTAB_TASKS["cifar"] == 100 and VTAB_TASKS["sun397"] == 397 and VTAB_TASKS["patch_camelyon"] == 2
    assert {f"vtab/{task}" for task in VTAB_TASKS} <= set(dataset_names())


def test_final_and_tuning_splits(tmp_path):
    root = write_vtab(tmp_path / "vtab-1k")
    final_train = build_split("vtab/eurosat", root, True, benchmark_split="final")
    final_test = build_split("vtab/eurosat", root, False, benchmark_split="final")
    tune_train = build_split("vtab/eurosat", root, True, benchmark_split="tune")
    tune_val = build_split("vtab/eurosat", root, False, benchmark_split="tune")
    assert [len(s.dataset) for s in (final_train, final_test, tune_train, tune_val)] == [12, 6, 8, 4]
    assert final_train.classes == [str(k) for k in range(10)]  # eurosat has 10 classes, whatever is listed
    image, label = final_train.dataset[9]
    assert isinstance(image, Image.Image) and image.size == (40, 24) and label == 1  # val200's second
    assert final_train.dataset.samples[0][0].endswith("eurosat/images/train800_0000.jpg")


def test_missing_and_malformed_files_are_one_line(tmp_path):
    root = write_vtab(tmp_path / "vtab-1k")
    with pytest.raises(AdaptFormerError, match="no kitti/ folder"):
        build_split("vtab/kitti", root, True)
    (root / "eurosat" / "test.txt").unlink()
    with pytest.raises(AdaptFormerError, match=r"eurosat/test.txt not found"):
        build_split("vtab/eurosat", root, False)
    (root / "dtd" / "images" / "val200_0001.jpg").unlink()
    missing = r"train800val200.txt: 1 of 12 listed images are missing \(.*val200_0001"
    with pytest.raises(AdaptFormerError, match=missing):
        build_split("vtab/dtd", root, True)
    (root / "dtd" / "train800.txt").write_text("images/train800_0000.jpg 0\nimages/train800_0001.jpg\n")
    with pytest.raises(AdaptFormerError, match=r"train800.txt:2: expected '<relative image path> <integer label>'"):
        build_split("vtab/dtd", root, True, benchmark_split="tune")
    (root / "dtd" / "train800.txt").write_text("images/train800_0000.jpg 47\n")
    with pytest.raises(AdaptFormerError, match=r"train800.txt:1: label 47 outside 0-46"):
        build_split("vtab/dtd", root, True, benchmark_split="tune")


def test_the_protocol_recipe_applies_unless_an_option_is_given(tmp_path):
    values = tiny_train_values(tmp_path, dataset="vtab/eurosat", data_root=str(tmp_path))
    config = TrainConfig.from_flat(values)
    assert (config.augment, config.resize_mode, config.crop_pct, config.interpolation) == (
        False,
        "squash",
        1.0,
        "bicubic",
    )
    assert TrainConfig.from_flat({**values, "augment": True}).augment is True
    assert TrainConfig.from_flat(tiny_train_values(tmp_path)).resize_mode is None  # other datasets: unchanged
    with pytest.raises(AdaptFormerError, match="--benchmark-split: expected one of final, tune"):
        TrainConfig.from_flat({**values, "benchmark_split": "val"})


def test_squash_resize_keeps_the_whole_image():
    image = Image.new("RGB", (40, 24), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 4, 24))  # a white stripe at the left edge: a centre crop would cut it
    squash = eval_transform(InputSpec(32, crop_pct=1.0, resize_mode="squash"))(image)
    crop = eval_transform(InputSpec(32, crop_pct=1.0))(image)
    assert squash.shape == crop.shape == (3, 32, 32)
    assert squash[:, :, 0].mean() > 1.5 and crop[:, :, 0].mean() < -1.5  # normalised white vs black
    expected = T.Resize((32, 32), interpolation=T.InterpolationMode.BICUBIC)(image)
    assert torch.allclose(squash, eval_transform(InputSpec(32, crop_pct=0.5, resize_mode="squash"))(expected))


def test_train_on_a_vtab_task_records_the_protocol(tmp_path, capsys):
    root = write_vtab(tmp_path / "vtab-1k")
    values = tiny_train_values(tmp_path, dataset="vtab/eurosat", data_root=str(root), epochs=1, warmup_epochs=0)
    args = ["train", "--dataset", "vtab/eurosat", "--data-root", str(root), "--model", values["model"]]
    args += ["--checkpoint", values["checkpoint"], "--model-kwargs", json.dumps(values["model_kwargs"])]
    args += ["--epochs", "1", "--batch-size", "4", "--effective-batch", "4", "--workers", "0", "--no-tensorboard"]
    assert main([*args, "--precision", "fp32", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["classes"] == 10 and summary["evaluated_on"] == "test"
    meta, _ = read_task(tmp_path / "run" / "last.safetensors")
    assert meta["preprocessing"]["resize_mode"] == "squash" and meta["preprocessing"]["interpolation"] == "bicubic"
    assert InputSpec.from_dict(meta["preprocessing"]).resize_mode == "squash"
    assert main([*args, "--benchmark-split", "tune", "--out", str(tmp_path / "tune")]) == 0
    tuned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tuned["evaluated_on"] == "validation (the benchmark's tuning split)"
