"""Sweeps, benchmarks and tune on Ray (a local Ray of two worker processes): every run is a Ray task (a Ray Tune
trial for tune) writing the same run directory as without Ray, a failing run is reported (and, for sweeps, tried
once more), and a rerun skips what Ray finished."""

import json

import pytest
import yaml
from test_benchmark import tiny_args

from adaptformer import AdaptFormerError
from adaptformer.cli import main
from adaptformer.experiments.benchmark import TUNE_LRS, benchmark_runs, best_tuned_lr
from adaptformer.experiments.dispatch import RayOptions
from adaptformer.experiments.sweep import run_sweep
from adaptformer.experiments.tune import tune
from formats import write_vtab
from training_helpers import tiny_train_values


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="adaptformer-dispatch-test")
    yield ray
    ray.shutdown()


def test_a_sweep_on_ray_trains_every_run_where_it_would_train_without(local_ray, tmp_path):
    base = tiny_train_values(tmp_path, epochs=1, tensorboard=False)
    sweep = tmp_path / "sweep.yaml"
    points = [{"method": "lora"}, {"method": "adapterplus"}, {"method": "linear", "data_root": str(tmp_path / "no")}]
    sweep.write_text(yaml.safe_dump({"base": base, "points": points}))
    rows = run_sweep(str(sweep), tmp_path / "out", ray=RayOptions(cpus_per_run=1))
    assert [row["run"] for row in rows[:2]] == ["method=lora", "method=adapterplus"]  # in the runs' order
    assert rows[2]["run"].startswith("data_root=")
    for row in rows[:2]:
        assert row["status"] == "trained" and row["score"] is not None
        assert (tmp_path / "out" / row["run"] / "summary.json").exists()
        assert (tmp_path / "out" / row["run"] / "last.safetensors").exists()
    failed = rows[2]
    assert failed["status"] == "failed" and failed["attempts"] == 2 and "no" in failed["error"]
    again = run_sweep(str(sweep), tmp_path / "out")  # here, without Ray: the same directories
    assert [row["status"] for row in again[:2]] == ["done already", "done already"]
    assert [row["score"] for row in again[:2]] == [row["score"] for row in rows[:2]]


def test_ray_options_are_checked_in_one_line(tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": tiny_train_values(tmp_path, epochs=1)}))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "o"), "--ray-address", "10.0.0.1:6379"]) == 2
    assert capsys.readouterr().err.strip() == "error: --ray-address: needs --ray"
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "o"), "--ray", "--gpus-per-run", "-1"]) == 2
    assert "--gpus-per-run: expected a number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_benchmark_with_a_learning_rate_search_on_ray(local_ray, tmp_path, capsys):
    """Every search run first (as Ray tasks), then the final run at the search's best rate, in the same layout."""
    root = write_vtab(tmp_path / "vtab-1k", tasks=("dtd",))
    args = tiny_args(tmp_path, root, "--methods", "fact-tt", "--tasks", "dtd", "--tune", "--ray")
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["run"] for r in rows] == [*(f"dtd/fact-tt/tune/lr={lr:g}" for lr in TUNE_LRS), "dtd/fact-tt"]
    assert all(r["status"] == "trained" for r in rows)
    config = yaml.safe_load((tmp_path / "bench" / "dtd" / "fact-tt" / "config.yaml").read_text())
    best = best_tuned_lr(tmp_path / "bench", next(r for r in benchmark_runs(
        "vtab", str(root), "vit_tiny_patch16_224", ["fact-tt"], only=["dtd"], tune=True) if not r.search))  # fmt: skip
    assert config["lr"] == best
    assert (tmp_path / "bench" / "report.md").exists()


def test_tune_on_ray_runs_the_search_as_ray_tune_trials_in_the_same_layout(local_ray, tmp_path):
    """The same axes, validation and retrain as without Ray; every trial a Ray Tune trial in OUT/trials/NNN; a
    rerun restores Ray Tune's experiment instead of starting the search again."""
    base = tiny_train_values(tmp_path, epochs=2, tensorboard=False, method="adaptformer")
    space = [("lr", [0.001, 0.2]), ("hflip", [0.0, 0.5])]
    lines = []
    ray = RayOptions(cpus_per_run=1)
    result = tune(base, tmp_path / "tune", space, 0.25, log=lines.append, trials=3, pruner="none", ray=ray)
    trials = result["trials"]
    assert result["searched_on"] == "ray" and [t["run"] for t in trials] == ["000", "001", "002"]
    assert all(t["status"] == "complete" and t["epochs"] == 2 for t in trials)
    for trial in trials:
        assert set(trial["values"]) == {"lr", "hflip"} and trial["values"]["lr"] in (0.001, 0.2)
        summary = json.loads((tmp_path / "tune/trials" / trial["run"] / "summary.json").read_text())
        assert summary["evaluated_on"] == "validation (0.25 of train)"
        assert summary["best_top1"] == trial["validation_score"]  # the best epoch, reported to Ray Tune
        assert any(line.startswith(f"tune: trial {trial['run']} (on Ray): ") for line in lines)
    best = max(trials, key=lambda t: t["validation_score"])
    assert result["validation_score"] == best["validation_score"]
    final = json.loads((tmp_path / "tune/final/summary.json").read_text())
    assert final["evaluated_on"] == "test" and final["top1"] == result["test_score"]
    assert yaml.safe_load((tmp_path / "tune/final/config.yaml").read_text())["lr"] == result["chosen"]["lr"]
    again = tune(base, tmp_path / "tune", space, 0.25, log=lines.append, trials=3, pruner="none", ray=ray)
    assert again["trials"] == trials and again["chosen"] == result["chosen"]  # restored, not searched again
    assert any("going on with the Ray Tune experiment" in line for line in lines)


def test_a_failing_trial_on_ray_says_why_in_one_line(local_ray, tmp_path):
    base = tiny_train_values(tmp_path, epochs=1, tensorboard=False, lr=1e6)  # diverges at once
    with pytest.raises(AdaptFormerError, match=r"tune: no trial finished; the first error: training diverged"):
        tune(base, tmp_path / "tune", [("hflip", [0.0])], log=lambda line: None, trials=1, ray=RayOptions())
    assert "error: training diverged" in (tmp_path / "tune/trials/000/train.log").read_text()


def test_tune_on_ray_refuses_folds_in_one_line(tmp_path, capsys):
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(tiny_train_values(tmp_path, epochs=1)))
    arguments = ["tune", "--config", str(config), "--out", str(tmp_path / "t"), "--trials", "1"]
    assert main([*arguments, "--ray", "--folds", "3"]) == 2
    refusal = "error: tune --ray: --folds scores every trial by several runs; use it without --ray"
    assert capsys.readouterr().err.strip() == refusal
    assert main([*arguments, "--ray-address", "10.0.0.1:6379"]) == 2
    assert capsys.readouterr().err.strip() == "error: --ray-address: needs --ray"
