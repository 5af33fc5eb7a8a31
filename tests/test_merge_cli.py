"""``adaptformer merge`` as a user runs it: a trained task folded into its backbone answers as the task does,
through ``predict --task head.safetensors --checkpoint merged.safetensors``; methods that cannot merge say why."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from adaptformer.cli import main
from adaptformer.train.loop import fit
from training_helpers import tiny_train_config


def predictions(capsys, task, checkpoint, images):
    code = main(["predict", "--task", str(task), "--checkpoint", str(checkpoint), "--precision", "fp32", "--json",
                 "--top-k", "3", *map(str, images)])  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    return {row["file"]: {p["label"]: p["prob"] for p in row["top_k"]} for row in rows}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        path = folder / f"{k}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "method,options",
    [("lora", {"lora_targets": ["qkv", "mlp"]}), ("repadapter", {"repadapter_dropout": 0.0}), ("fact-tk", {})],
)
def test_a_merged_task_answers_as_the_task(tmp_path, images, capsys, method, options):
    cfg = tiny_train_config(tmp_path, method=method, epochs=2, lr=0.3, **options)
    fit(cfg)
    capsys.readouterr()
    task = tmp_path / "run" / "last.safetensors"
    assert main(["merge", str(task), "--out", str(tmp_path / "merged"), "--checkpoint", cfg.checkpoint]) == 0
    assert "head-only task" in capsys.readouterr().out
    merged, head = tmp_path / "merged" / "merged.safetensors", tmp_path / "merged" / "head.safetensors"
    original = load_file(cfg.checkpoint)
    folded = load_file(str(merged))
    assert set(folded) <= set(original) and any(not (folded[k] == original[k]).all() for k in folded)
    expected = predictions(capsys, task, cfg.checkpoint, images)
    answered = predictions(capsys, head, merged, images)
    for file, probabilities in expected.items():
        assert answered[file].keys() == probabilities.keys()
        for label, probability in probabilities.items():
            assert abs(answered[file][label] - probability) < 1e-5


def test_methods_that_cannot_merge_are_refused_in_one_line(tmp_path, capsys):
    cfg = tiny_train_config(tmp_path, method="adaptformer", epochs=1)
    fit(cfg)
    capsys.readouterr()
    task = tmp_path / "run" / "last.safetensors"
    assert main(["merge", str(task), "--out", str(tmp_path / "merged"), "--checkpoint", cfg.checkpoint]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: task file {task}: method adaptformer cannot be merged: ") and "\n" not in error
    assert not (tmp_path / "merged").exists()  # nothing written


def test_methods_lists_every_method_with_what_it_merges(capsys):
    assert main(["methods", "--json"]) == 0
    rows = {row["method"]: row for row in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    for name in ("adapterplus", "repadapter", "fact-tt", "fact-tk", "dora", "houlsby", "pfeiffer", "lntune"):
        assert rows[name]["reference"] and rows[name]["label"]
    assert rows["repadapter"]["merges"] and rows["dora"]["merges"] and not rows["adapterplus"]["merges"]
    assert not rows["full"]["shares_backbone"]
