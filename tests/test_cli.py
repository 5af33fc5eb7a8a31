"""The eval / predict / train commands as a user runs them, including bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from adaptformer.cli import main
from adaptformer.train.config import list_packaged_configs, load_config_file, make_config
from adaptformer.train.loop import fit
from training_helpers import tiny_train_config


@pytest.fixture(scope="module")
def trained_task(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")
    cfg = tiny_train_config(tmp_path, epochs=2, lr=0.2, augment=False)
    fit(cfg)
    return cfg, tmp_path / "run" / "best.safetensors"


def test_eval_reports_top1_and_top5(trained_task, capsys):
    cfg, task = trained_task
    code = main(
        [
            "eval",
            "--task",
            str(task),
            "--checkpoint",
            cfg.checkpoint,
            "--dataset",
            "imagefolder",
            "--data-root",
            cfg.data_root,
            "--workers",
            "0",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["samples"] == 6 and 0 <= result["top1"] <= result["top5"] == 100.0


def test_eval_refuses_a_dataset_with_other_classes(trained_task, capsys):
    cfg, task = trained_task
    assert main(["eval", "--task", str(task), "--checkpoint", cfg.checkpoint, "--dataset", "digits"]) == 2
    assert "has 10 classes, the task was trained on 3" in capsys.readouterr().err


def test_predict_files_and_folders_with_an_unreadable_image(trained_task, tmp_path, capsys):
    cfg, task = trained_task
    folder = tmp_path / "imgs"
    folder.mkdir()
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 220
    Image.fromarray(red).save(folder / "red.png")
    (folder / "broken.jpg").write_bytes(b"nope")
    assert (
        main(["predict", "--task", str(task), "--checkpoint", cfg.checkpoint, str(folder), "--top-k", "2", "--json"])
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    rows = {r["file"].split("/")[-1]: r for r in lines}
    assert rows["broken.jpg"]["error"].startswith("not a readable image")
    assert rows["red.png"]["task"] == "best" and len(rows["red.png"]["top_k"]) == 2
    assert rows["red.png"]["top_k"][0]["label"] == "red"
    assert main(["predict", "--task", str(task), "--checkpoint", cfg.checkpoint, str(folder / "red.png")]) == 0
    assert "red.png  red " in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "--task", "missing.safetensors", "x.png"], "x.png: no such file"),
        (["eval", "--task", "missing.safetensors", "--dataset", "digits"], "missing.safetensors: no such file"),
        (["train", "--dataset", "nope", "--model", "vit_tiny_patch16_224", "--no-pretrained"], "--dataset"),
        (["train", "--config", "image/imagenet_magic"], "no such file or packaged config"),
        (["train", "--method", "nosuchmethod"], "method: expected one of"),
        (
            [
                "train",
                "--dataset",
                "digits",
                "--model",
                "vit_tiny_patch16_224",
                "--no-pretrained",
                "--precision",
                "fp16",
                "--device",
                "cpu",
            ],
            "--precision fp16 needs a CUDA device",
        ),
        (["train", "--dataset", "digits", "--device", "tpu9"], "--device"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


def test_every_packaged_paper_config_is_valid():
    names = list_packaged_configs()
    expected = {
        f"image/{d}_{m}" for d in ("cifar100", "svhn", "food101") for m in ("adaptformer", "linear", "vpt", "full")
    }
    assert expected <= set(names)
    for name in expected:
        cfg = make_config(load_config_file(name), {})
        assert cfg.epochs == 100 and cfg.warmup_epochs == 20 and cfg.effective_batch == 1024 and cfg.blr == 0.1
        assert cfg.momentum == 0.9 and cfg.weight_decay == 0.0 and cfg.model == "vit_base_patch16_224.mae"
        assert cfg.crop_pct == 0.875
        assert cfg.method == name.rsplit("_", 1)[1]


def test_command_line_overrides_the_config_file(tmp_path):
    from adaptformer.cli import build_parser
    from adaptformer.cli.commands import train_config_from_args

    args = build_parser().parse_args(
        [
            "train",
            "--config",
            "image/svhn_adaptformer",
            "--bottleneck",
            "8",
            "--scale",
            "learnable",
            "--no-augment",
            "--model-kwargs",
            '{"depth": 2}',
        ]
    )
    cfg = train_config_from_args(args)
    method = cfg.method_config
    assert (cfg.dataset, method.bottleneck, method.scale, cfg.augment) == ("svhn", 8, "learnable", False)
    assert cfg.model_kwargs == {"depth": 2} and cfg.epochs == 100


def test_unknown_config_keys_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: cifar100\nlearning_rate: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown option(s) learning_rate" in capsys.readouterr().err


def test_paper_config_runs_end_to_end_on_cifar100_files(tmp_path, capsys):
    from formats import write_cifar100

    write_cifar100(tmp_path / "cifar100", train=16, test=4)
    args = [
        "train",
        "--config",
        "image/cifar100_adaptformer",
        "--data-root",
        str(tmp_path / "cifar100"),
        "--no-verify",
        "--no-pretrained",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--batch-size",
        "8",
        "--effective-batch",
        "8",
        "--max-train-samples",
        "8",
        "--max-eval-samples",
        "4",
        "--workers",
        "0",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["trainable"] == 1_266_532 and summary["classes"] == 100 and summary["lr"] == 0.1 * 8 / 256
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "model: vit_base_patch16_224.mae" in resolved and "crop_pct: 0.875" in resolved


def test_every_packaged_video_config_is_valid():
    names = set(list_packaged_configs())
    expected = {f"video/{d}_{m}" for d in ("ssv2", "hmdb51") for m in ("adaptformer", "linear", "vpt", "full")}
    expected |= {f"video/hmdb51_adaptformer_frames{f}" for f in (2, 4, 8)}
    assert expected <= names
    for name in expected:
        cfg = make_config(load_config_file(name), {})
        assert (cfg.epochs, cfg.warmup_epochs, cfg.effective_batch, cfg.blr) == (90, 10, 512, 0.1), name
        assert cfg.model == "videomae_base_patch16_224" and cfg.test_crops == 3
        assert cfg.test_clips == (2 if "ssv2" in name else 4)
        if name.endswith(("_adaptformer", "frames2", "frames4", "frames8")):
            assert cfg.method_config.dropout == 0.0
    assert make_config(load_config_file("video/hmdb51_adaptformer_frames2"), {}).num_frames == 2


def test_one_source_for_the_version(capsys):
    from importlib.metadata import version

    import adaptformer

    assert version("adaptformer") == adaptformer.__version__  # pyproject reads version.py
    with pytest.raises(SystemExit) as exited:  # argparse's version action
        main(["--version"])
    assert exited.value.code == 0 and adaptformer.__version__ in capsys.readouterr().out
