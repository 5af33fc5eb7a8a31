"""The validation split carved from the training set, and ``adaptformer tune`` (Optuna search, pruning, a time
budget, folds where they settle a close call, retrain)."""

import json
import time
from collections import Counter

import pytest
import yaml

from adaptformer import AdaptFormerError
from adaptformer.cli import main
from adaptformer.data.registry import build_split, carve_validation, fold_split, labels_of
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


def test_tune_searches_with_optuna_then_retrains_the_winner_and_a_rerun_goes_on(tmp_path):
    base = tiny_train_values(tmp_path, epochs=2, tensorboard=False, method="adaptformer")
    space = [("lr", [0.001, 0.2]), ("hflip", [0.0, 0.5])]
    lines = []
    result = tune(base, tmp_path / "tune", space, validation_split=0.25, log=lines.append, trials=3, pruner="none")
    trials = result["trials"]
    assert len(trials) == 3 and all(t["status"] == "complete" for t in trials)
    best = max(trials, key=lambda t: t["validation_score"])
    assert result["chosen"] == best["values"] and result["validation_score"] == best["validation_score"]
    summaries = [json.loads((tmp_path / "tune/trials" / t["run"] / "summary.json").read_text()) for t in trials]
    assert all(s["evaluated_on"] == "validation (0.25 of train)" for s in summaries)
    assert [s["best_top1"] for s in summaries] == [t["validation_score"] for t in trials]  # a trial's best epoch
    final = json.loads((tmp_path / "tune/final/summary.json").read_text())
    assert final["evaluated_on"] == "test" and final["top1"] == result["test_score"]
    final_config = yaml.safe_load((tmp_path / "tune/final/config.yaml").read_text())
    assert final_config["lr"] == result["chosen"]["lr"] and final_config["hflip"] == result["chosen"]["hflip"]
    assert (tmp_path / "tune/final/last.safetensors").exists() and "Chosen:" in (tmp_path / "tune/tune.md").read_text()
    # a rerun with a larger cap goes on with the same study: the three trials are kept, one more runs
    again = tune(base, tmp_path / "tune", space, validation_split=0.25, log=lines.append, trials=4, pruner="none")
    assert len(again["trials"]) == 4 and again["trials"][:3] == trials
    assert again["seconds"] >= result["seconds"]


def test_a_time_budget_stops_starting_trials_and_hopeless_trials_are_pruned(tmp_path):
    base = tiny_train_values(tmp_path, epochs=4, tensorboard=False, method="linear")
    space = [("lr", [1e-6, 0.3]), ("hflip", [0.0, 0.5]), ("scale_min", [0.5, 0.9])]
    lines = []
    began = time.perf_counter()
    result = tune(base, tmp_path / "tune", space, validation_split=0.25, log=lines.append, time_budget=20.0)
    trials = result["trials"]
    last_start = sum(t["seconds"] or 0 for t in trials[:-1])  # the last trial started inside the budget
    longest = max(t["seconds"] or 0 for t in trials)
    assert last_start <= 20.0 + 5 and time.perf_counter() - began < 20.0 + 3 * longest + 15  # + the retrain
    assert result["time_budget"] == 20.0 and "20 s budget" in (tmp_path / "tune/tune.md").read_text()
    pruned = [t for t in trials if t["status"] == "pruned"]
    for trial in pruned:  # stopped early, below the median of the trials before it at that epoch
        assert trial["epochs"] < 4 and any(line.startswith(f"tune: trial {trial['run']} pruned") for line in lines)
    assert all(t["epochs"] == 4 for t in trials if t["status"] == "complete")


def test_default_space_is_the_methods_own():
    fields = ["lr", "train_crop", "scale_min", "hflip", "scale", "bottleneck"]
    assert [field for field, _ in default_space("adaptformer")] == fields
    assert [field for field, _ in default_space("linear")] == ["lr", "train_crop", "scale_min", "hflip"]
    assert dict(default_space("linear"))["train_crop"] == ["random_resized", "pad"]
    assert dict(default_space("full"))["lr"] == [0.005, 0.025, 0.1]
    assert "fact_scale" in dict(default_space("fact-tt")) and "convpass_scale" in dict(default_space("convpass"))


def test_the_first_trial_is_the_recipe_the_search_would_replace(tmp_path):
    """The default space holds the base's own values (its rate by the scaling rule, which the method's rates
    leave out), and the base is the first trial: the search is scored against what it would replace."""
    base = {**tiny_train_values(tmp_path, epochs=1, tensorboard=False, method="adaptformer"), "lr": None}
    base["blr"] = 0.2
    result = tune(base, tmp_path / "tune", log=lambda line: None, trials=1, pruner="none")
    first = result["trials"][0]["values"]
    rate = 0.2 * result["effective_batch"] / 256
    assert first == {"lr": rate, "train_crop": "random_resized", "scale_min": 0.08, "hflip": 0.5, "scale": 0.1,
                     "bottleneck": 64}  # fmt: skip
    assert result["space"]["lr"] == sorted([rate, *default_space("adaptformer")[0][1]])
    summary = json.loads((tmp_path / "tune/trials/000/summary.json").read_text())
    assert summary["lr"] == pytest.approx(rate)
    # a space of the user's that leaves the base out is searched as given
    space = [("lr", [0.3]), ("hflip", [0.0])]
    other = tune(base, tmp_path / "other", space, log=lambda line: None, trials=1, pruner="none")
    assert other["trials"][0]["values"] == {"lr": 0.3, "hflip": 0.0} and other["space"] == {"lr": [0.3], "hflip": [0.0]}


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


def test_folds_are_stratified_disjoint_cover_everything_and_fixed():
    labels = [i % 3 for i in range(30)]
    held_all = []
    for fold in range(5):
        kept, held = fold_split(labels, fold, 5)
        assert len(held) == 6 and not set(kept) & set(held) and sorted(kept + held) == list(range(30))
        assert Counter(labels[i] for i in held) == {0: 2, 1: 2, 2: 2}
        held_all += held
    assert sorted(held_all) == list(range(30)) and fold_split(labels, 2, 5) == fold_split(labels, 2, 5)


def test_small_data_gets_a_batch_the_trials_can_fill_and_folds_on_request(tmp_path):
    """24 training images with the paper's batch 1024: every trial used to fail with empty logs. Now the batch
    is lowered before any trial (said in one line); ``folds=5`` scores each trial by 5-fold validation, and the
    test split is used once, by the retrained winner."""
    base = tiny_train_values(tmp_path, epochs=1, tensorboard=False, effective_batch=1024, batch_size=128)
    lines = []
    space = [("train_crop", ["random_resized", "pad"])]
    result = tune(base, tmp_path / "tune", space, log=lines.append, folds=5, trials=1)
    assert result["folds"] == 5 and result["training_images"] == 24 and result["trial_training_images"] == 20
    assert (result["effective_batch"], result["batch_size"]) == (4, 4)  # 20 images: at least 4 steps an epoch
    assert any("--effective-batch 1024 -> 4 and --batch-size 128 -> 4" in line for line in lines)
    folds = [json.loads((tmp_path / f"tune/trials/000/fold={k}/summary.json").read_text()) for k in range(5)]
    assert [f["evaluated_on"] for f in folds] == [f"validation (fold {k} of 5 of train)" for k in range(5)]
    assert result["trials"][0]["validation_score"] == pytest.approx(sum(f["best_top1"] for f in folds) / 5)
    assert "5-fold" in (tmp_path / "tune/tune.md").read_text()
    if result["chosen"]["train_crop"] == "pad":  # the small-image recipe evaluates the whole image
        meta = json.loads((tmp_path / "tune/final/last.json").read_text())
        assert meta["preprocessing"]["resize_mode"] == "squash"


def test_a_failing_trial_says_why_in_one_line(tmp_path):
    base = tiny_train_values(tmp_path, epochs=1, tensorboard=False, lr=1e6)  # diverges at once
    lines = []
    with pytest.raises(AdaptFormerError, match=r"tune: no trial finished; the first error: training diverged"):
        tune(base, tmp_path / "tune", [("hflip", [0.0, 0.5])], log=lines.append, trials=2)
    assert any(line.startswith("tune: trial 000 failed: training diverged") for line in lines)
    assert "error: training diverged" in (tmp_path / "tune/trials/000/train.log").read_text()


def test_pad_crop_trains_on_whole_images_and_evaluates_them_whole(tmp_path):
    from adaptformer.tasks import read_task

    fit(tiny_train_config(tmp_path, epochs=1, train_crop="pad"))
    meta, _ = read_task(tmp_path / "run" / "last.safetensors")
    assert meta["preprocessing"]["resize_mode"] == "squash"


def test_a_configuration_proposed_again_is_not_trained_again(tmp_path):
    base = tiny_train_values(tmp_path, epochs=1, tensorboard=False, method="linear")
    result = tune(base, tmp_path / "tune", [("hflip", [0.0, 0.5])], log=lambda line: None, trials=5, pruner="none")
    trained = [t for t in result["trials"] if t["status"] == "complete"]
    repeats = [t for t in result["trials"] if t["status"].startswith("complete (as ")]
    assert len(trained) == 2 and len(trained) + len(repeats) <= 5  # two configurations exist: then it stops
    assert sorted((tmp_path / "tune/trials").iterdir()) == sorted(tmp_path / "tune/trials" / t["run"] for t in trained)
    for repeat in repeats:
        first = next(t for t in trained if t["run"] == repeat["status"][len("complete (as ") : -1])
        assert repeat["values"] == first["values"] and repeat["validation_score"] == first["validation_score"]
