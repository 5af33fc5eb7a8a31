"""The validation split carved from the training set, and ``adaptformer tune`` (coordinate search + retrain)."""

import json
from collections import Counter

import pytest
import yaml

from adaptformer import AdaptFormerError
from adaptformer.cli import main
from adaptformer.data.registry import build_split, carve_validation, labels_of
from adaptformer.experiments.tune import default_space, tune
from adaptformer.train.loop import fit
from training_helpers import tiny_train_config, tiny_train_values


def test_carved_validation_is_stratified_disjoint_and_fixed():
    labels = [i % 4 for i in range(50)] + [3] * 10
    kept, held = carve_validation(labels, 0.2)
    assert len(held) == 12 and not set(kept) & set(held) and sorted(kept + held) == list(range(60))
    assert set(Counter(labels[i] for i in held)) == {0, 1, 2, 3}  # every class is in the validation part
    assert carve_validation(labels, 0.2) == (kept, held)
    with pytest.raises(AdaptFormerError, match="--validation-split 0.5: the training set has 1 samples"):
        carve_validation([0], 0.5)


def test_labels_are_read_without_decoding_images(tmp_path):
    split = build_split("digits", None, True)
    assert labels_of(split.dataset) == split.dataset.labels.tolist()


def test_training_with_a_validation_split_never_evaluates_on_the_test_split(tmp_path):
    summary = fit(tiny_train_config(tmp_path, validation_split=0.25, epochs=1))
    assert summary["evaluated_on"] == "validation (0.25 of train)"
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [line for line in lines if "test_top1" in line]
    # 24 training images (every 5th of 30 is the test split): 6 held out, 18 trained on
    assert evaluated and all(line["test_samples"] == 6 for line in evaluated)
    assert fit(tiny_train_config(tmp_path, out=str(tmp_path / "plain"), epochs=1))["evaluated_on"] == "test"


def test_tune_searches_axes_in_order_then_retrains_the_winner(tmp_path):
    base = tiny_train_values(tmp_path, epochs=2, tensorboard=False, method="adaptformer")
    space = [("lr", [0.001, 0.2]), ("hflip", [0.0, 0.5])]
    lines = []
    result = tune(base, tmp_path / "tune", space, validation_split=0.25, log=lines.append)
    trials = result["trials"]
    assert [t["values"]["lr"] for t in trials][:2] == [0.001, 0.2] and len(trials) == 3  # one trial reused
    first_axis = {t["values"]["lr"]: t["validation_top1"] for t in trials[:2]}
    assert result["chosen"]["lr"] == max(first_axis, key=lambda lr: (first_axis[lr], -lr))
    summaries = [json.loads((tmp_path / "tune/trials" / t["run"] / "summary.json").read_text()) for t in trials]
    assert all(s["evaluated_on"] == "validation (0.25 of train)" for s in summaries)
    final = json.loads((tmp_path / "tune/final/summary.json").read_text())
    assert final["evaluated_on"] == "test" and final["top1"] == result["test_top1"]
    final_config = yaml.safe_load((tmp_path / "tune/final/config.yaml").read_text())
    assert final_config["lr"] == result["chosen"]["lr"] and final_config["hflip"] == result["chosen"]["hflip"]
    assert (tmp_path / "tune/final/last.safetensors").exists() and "Chosen:" in (tmp_path / "tune/tune.md").read_text()
    again = tune(base, tmp_path / "tune", space, validation_split=0.25, log=lines.append)  # a rerun trains nothing
    assert {t["status"] for t in again["trials"]} == {"done already"} and again["chosen"] == result["chosen"]


def test_default_space_matters_for_the_method():
    fields = ["lr", "scale_min", "hflip", "scale", "bottleneck", "lr"]
    assert [field for field, _ in default_space("adaptformer")] == fields
    assert [field for field, _ in default_space("linear")] == ["lr", "scale_min", "hflip", "lr"]
    assert dict(default_space("full"))["lr"] == [0.005, 0.025, 0.1]


def test_bad_spaces_fail_before_any_trial(tmp_path, capsys):
    base = tiny_train_values(tmp_path)
    with pytest.raises(AdaptFormerError, match="tune: bottleneck: expected an integer"):
        tune(base, tmp_path / "t", [("bottleneck", ["wide"])])
    space = tmp_path / "space.yaml"
    space.write_text("lr: []\n")
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(base))
    assert main(["tune", "--config", str(config), "--space", str(space), "--out", str(tmp_path / "t")]) == 2
    assert "--space" in capsys.readouterr().err and not (tmp_path / "t").exists()
