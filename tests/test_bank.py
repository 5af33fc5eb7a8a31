"""The task bank: many task files on one backbone, predictions equal to each task's own model, refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.bank import TaskBank
from adaptformer.cli import main
from adaptformer.train.loop import fit
from training_helpers import tiny_train_config


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    runs = {
        "colour": dict(method="adaptformer", bottleneck=8),
        "prompted": dict(method="vpt", vpt_tokens=2, seed=1),
        "probe": dict(method="linear", seed=2),
        "whole": dict(method="full"),
    }
    files = {}
    for name, options in runs.items():
        cfg = tiny_train_config(root, epochs=1, out=str(root / name), lr=0.1, augment=False, **options)
        fit(cfg)
        files[name] = root / name / "last.safetensors"
    return root, files


def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]


def test_bank_predictions_equal_each_task_alone(task_files):
    root, files = task_files
    checkpoint = str(root / "tiny_vit.safetensors")
    bank = TaskBank.from_files(
        [str(files["colour"]), f"prompted={files['prompted']}", f"probe={files['probe']}"],
        checkpoint=checkpoint,
        device="cpu",
        precision="fp32",
    )
    assert bank.tasks == ["last", "prompted", "probe"]
    results = bank.predict_images(images(), top_k=3)
    assert [(r["index"], r["task"]) for r in results][:3] == [(0, "last"), (0, "prompted"), (0, "probe")]
    for name, file in (("last", files["colour"]), ("prompted", files["prompted"]), ("probe", files["probe"])):
        alone = adaptformer.load_task(file, checkpoint=checkpoint).eval()
        from adaptformer.data.transforms import eval_transform

        transform = eval_transform(bank.info(name).spec)
        with torch.no_grad():
            probs = alone(torch.stack([transform(image) for image in images()])).softmax(1)
        for row in (r for r in results if r["task"] == name):
            top = row["top_k"][0]
            expected = probs[row["index"]]
            assert top["label"] == alone.classes[int(expected.argmax())]
            assert top["prob"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_bank_refusals_and_removal(task_files):
    root, files = task_files
    checkpoint = str(root / "tiny_vit.safetensors")
    bank = TaskBank.from_files([f"colour={files['colour']}"], checkpoint=checkpoint, device="cpu")
    with pytest.raises(AdaptFormerError, match="already has a task of that name"):
        bank.load(f"colour={files['probe']}")
    with pytest.raises(AdaptFormerError, match="(?i)full fine-tuning trains the backbone"):
        bank.load(str(files["whole"]))
    random_backbone = TaskBank.from_files(
        [f"colour={files['colour']}"], checkpoint=None, pretrained=False, device="cpu", check_backbone=False
    )
    random_backbone.check_backbone = True
    with pytest.raises(AdaptFormerError, match="other backbone weights"):
        random_backbone.load(f"probe={files['probe']}")
    bank.load(f"probe={files['probe']}")
    bank.remove("colour")
    assert bank.tasks == ["probe"] and list(bank.model.tasks) == ["probe"]
    with pytest.raises(AdaptFormerError, match="no such task"):
        bank.remove("colour")
    with pytest.raises(AdaptFormerError, match="NAME=FILE"):
        bank.load("=nothing")


def test_predict_command_with_several_tasks(task_files, tmp_path, capsys):
    root, files = task_files
    folder = tmp_path / "images"
    folder.mkdir()
    for k, image in enumerate(images()):
        image.save(folder / f"{k}.png")
    args = ["predict", "--task", f"colour={files['colour']}", "--task", f"probe={files['probe']}"]
    args += ["--checkpoint", str(root / "tiny_vit.safetensors"), str(folder), "--top-k", "2"]
    assert main([*args, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(line["file"].rsplit("/", 1)[-1], line["task"]) for line in lines] == [
        (f"{k}.png", task) for k in range(3) for task in ("colour", "probe")
    ]
    assert all(len(line["top_k"]) == 2 and set(line["top_k"][0]) == {"label", "prob"} for line in lines)
    assert main(args) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 3 and "colour: " in table[0] and "  |  probe: " in table[0]


def test_task_paths_with_equals_signs_are_files(task_files, tmp_path):
    from adaptformer.bank import parse_task_argument

    _, files = task_files
    run_dir = tmp_path / "bottleneck=4"
    run_dir.mkdir()
    (run_dir / "best.safetensors").write_bytes(files["colour"].read_bytes())
    assert parse_task_argument(str(run_dir / "best.safetensors")) == ("best", run_dir / "best.safetensors")
    assert parse_task_argument(f"colour={run_dir / 'best.safetensors'}") == ("colour", run_dir / "best.safetensors")
    assert parse_task_argument("digits=missing.safetensors") == ("digits", Path("missing.safetensors"))


def serves_like_each_alone(tmp_path, name: str, shape: dict, tasks: tuple) -> list:
    """Task files made on ``name`` (random weights saved as a checkpoint), one bank answering a mixed batch: each
    answer equals the task's own model. Returns the models that made the files."""
    from safetensors.torch import save_file

    from adaptformer.data.transforms import eval_transform

    torch.manual_seed(7)  # not the loader's reference seed (0): its check that the file set every weight holds
    backbone = timm.create_model(name, pretrained=False, **shape)
    checkpoint = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(checkpoint))
    files, models = [], []
    for task, method, options in tasks:
        model = adaptformer.create_model(
            name, method, num_classes=3, checkpoint=checkpoint, timm_kwargs=shape, task=task, **options
        )
        for parameter in model.task.parameters():
            parameter.data.normal_(0, 0.1)
        files.append(adaptformer.save_task(model, tmp_path / f"{task}.safetensors", task=task))
        models.append(model)
    bank = TaskBank.from_files([str(f) for f in files], checkpoint=str(checkpoint), device="cpu", precision="fp32")
    results = bank.predict_images(images(), top_k=3)
    for file in files:
        alone = adaptformer.load_task(file, checkpoint=checkpoint).eval()
        transform = eval_transform(bank.info(file.stem).spec)
        with torch.no_grad():
            probs = alone(torch.stack([transform(image) for image in images()])).softmax(1)
        rows = [r for r in results if r["task"] == file.stem]
        assert len(rows) == len(images())
        for row in rows:
            assert row["top_k"][0]["prob"] == pytest.approx(float(probs[row["index"]].max()), abs=1e-5)
    return models


def test_a_found_backbone_serves_adaptformer_and_ssf_task_files_like_each_alone(tmp_path):
    """A backbone of no declared family (ConvNeXt: (B, C, H, W) blocks, a channels-last MLP, the residual is the
    block's input) through the task store: files made on it, one mixed batch, each answer its task's own."""
    shape = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32], "conv_mlp": False}
    tasks = (("a", "adaptformer", {"bottleneck": 4}), ("b", "ssf", {}), ("c", "adaptformer", {}))
    models = serves_like_each_alone(tmp_path, "convnext_atto", shape, tasks)
    assert all(model.family.name == "found by its anatomy" for model in models)


def test_a_swin_backbone_serves_several_tasks_from_files_like_each_alone(tmp_path):
    """A hierarchical backbone through the bank: task files made on Swin (AdaptFormer sized per stage, LoRA),
    one mixed batch, each prediction equal to the task's own model."""
    shape = {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2]}
    tasks = (("a", "adaptformer", {"bottleneck": 4}), ("b", "lora", {}))
    serves_like_each_alone(tmp_path, "swin_tiny_patch4_window7_224", shape, tasks)
