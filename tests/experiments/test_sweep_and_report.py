"""Sweeps (grid, points, seeds, shards, skip/resume, validation) and reports over their run directories."""

import json

import pytest
import yaml

from adaptformer import AdaptFormerError
from adaptformer.cli import main
from adaptformer.experiments.report import write_report
from adaptformer.experiments.sweep import load_sweep, run_sweep, shard
from adaptformer.methods.layers import resolve_layers
from training_helpers import tiny_train_values


def sweep_file(tmp_path, grid=None, points=None, **base):
    values = tiny_train_values(
        tmp_path, epochs=2, lr=0.1, tensorboard=False, augment=False, method="adaptformer", **base
    )
    path = tmp_path / "sweep.yaml"
    content = {"base": values}
    if grid is not None:
        content["grid"] = grid
    if points is not None:
        content["points"] = points
    path.write_text(yaml.safe_dump(content))
    return path


def test_grid_points_seeds_and_names(tmp_path):
    path = sweep_file(tmp_path, grid={"bottleneck": [2, 4], "layers": ["all", [0, 1]]}, points=[{}, {"scale": 0.5}])
    runs = load_sweep(str(path))
    assert len(runs) == 2 * 2 * 2
    assert runs[0].name == "bottleneck=2,layers=all" and runs[3].name == "bottleneck=4,layers=0-1"
    assert runs[4].name.startswith("scale=0.5,") and runs[4].values["scale"] == 0.5
    seeded = load_sweep(str(path), seeds=3)
    assert len(seeded) == 24 and seeded[2].name.endswith("seed=2")
    parts = [shard(runs, f"{i}/3") for i in range(3)]
    assert sorted(r.name for p in parts for r in p) == sorted(r.name for r in runs) and len(parts[0]) == 3


@pytest.mark.parametrize(
    "grid, points, message",
    [
        ({"bottleneck": []}, None, r"grid.bottleneck: expected a non-empty list"),
        ({"bottlenek": [1]}, None, r"unknown option\(s\) bottlenek"),
        ({"bottleneck": ["wide"]}, None, r"bottleneck: expected an integer"),
        (None, [{"vpt_tokens": 2}], r"vpt_tokens is an option of vpt, not of method adaptformer"),
        ({"bottleneck": 4}, None, r"grid.bottleneck: expected a non-empty list"),
    ],
)
def test_bad_sweeps_fail_before_any_run(tmp_path, grid, points, message):
    path = sweep_file(tmp_path, grid=grid, points=points)
    with pytest.raises(AdaptFormerError, match=message):
        run_sweep(str(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rerun_skips_finished_and_resumes_unfinished_runs(tmp_path):
    path = sweep_file(tmp_path, grid={"bottleneck": [2, 4]})
    first = run_sweep(str(path), tmp_path / "out")
    assert [r["status"] for r in first] == ["trained", "trained"]
    (tmp_path / "out" / "bottleneck=4" / "summary.json").unlink()  # as if killed after its last checkpoint
    again = run_sweep(str(path), tmp_path / "out")
    assert [r["status"] for r in again] == ["done already", "resumed"]
    assert (tmp_path / "out" / "bottleneck=4" / "summary.json").exists()


def test_cli_sweep_shard_and_report(tmp_path, capsys):
    path = sweep_file(tmp_path, points=[{"method": "linear"}, {"method": "adaptformer", "bottleneck": 4}])
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--shard", "1/2", "--seeds", "2"]) == 0
    done = [json.loads(line)["run"] for line in capsys.readouterr().out.strip().splitlines()]
    assert done == ["method=linear,seed=1", "bottleneck=4,method=adaptformer,seed=1"]  # keys in file order
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--shard", "0/2", "--seeds", "2"]) == 0
    (tmp_path / "out" / "not-a-run").mkdir()
    runs = sorted(str(p) for p in (tmp_path / "out").iterdir())
    assert main(["report", *runs, "--out", str(tmp_path / "report")]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "not-a-run" in captured.err
    report = (tmp_path / "report" / "report.md").read_text()
    assert "2 configurations" in report and " ± " in report and "accuracy_vs_params.png" in report
    assert (tmp_path / "report" / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "curves.png").exists()
    assert "data:image/png;base64," in (tmp_path / "report" / "report.html").read_text()
    # the sweep's folder itself: its runs are found under it
    assert main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "report2")]) == 0
    assert "(2 configurations, 0 skipped)" in capsys.readouterr().out


def test_report_marks_partial_runs_and_plots_varying_options(tmp_path):
    path = sweep_file(tmp_path, grid={"bottleneck": [2, 8]})
    run_sweep(str(path), tmp_path / "out")
    (tmp_path / "out" / "bottleneck=8" / "summary.json").unlink()
    result = write_report(sorted((tmp_path / "out").iterdir()), tmp_path / "report")
    assert result["axes"] == ["bottleneck"] and "accuracy_vs_bottleneck.png" in result["plots"]
    assert "(partial)" in (tmp_path / "report" / "report.md").read_text()


def test_packaged_ablation_sweeps_are_valid():
    sizes = {
        name: len(load_sweep(name))
        for name in ("bottleneck", "layers", "placement", "scale", "vpt_tokens", "vpt_modes", "methods", "frames")
    }
    assert sizes == {
        "bottleneck": 9,
        "layers": 11,
        "placement": 2,
        "scale": 7,
        "vpt_tokens": 6,
        "vpt_modes": 6,
        "methods": 16,
        "frames": 3,
    }


@pytest.mark.parametrize(
    "spec, depth, expected",
    [("top:6/12", 6, [3, 4, 5]), ("bottom:1/12", 6, [0]), ("top:12/12", 4, [0, 1, 2, 3]), ("top:2/12", 6, [5])],
)
def test_layer_counts_scaled_to_the_depth(spec, depth, expected):
    assert resolve_layers(spec, depth) == expected


def test_a_failing_run_is_reported_and_the_others_still_run(tmp_path, capsys):
    path = sweep_file(tmp_path, points=[{"lr": 1.0e6}, {"bottleneck": 4}])  # the first diverges
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["status"] for r in rows] == ["failed", "trained"] and "loss is" in rows[0]["error"]
    assert "1 run(s) failed: lr=1000000.0" in captured.err


def test_set_replaces_base_fields_and_is_validated_first(tmp_path, capsys):
    path = sweep_file(tmp_path, grid={"bottleneck": [2]})
    runs = load_sweep(str(path), overrides={"epochs": 5, "scale": 0.2})
    assert runs[0].values["epochs"] == 5 and runs[0].values["scale"] == 0.2
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run", "--set", "epochs=7"]) == 0
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--set", "epochz=7"]) == 2
    assert "unknown option(s) epochz" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--set", "epochs"]) == 2
    assert "--set 'epochs': expected FIELD=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_runs_from_before_an_option_existed_group_with_newer_runs(tmp_path):
    from adaptformer.experiments.report import group_seeds, read_run
    from adaptformer.train.config import TrainConfig

    full = TrainConfig.from_flat(tiny_train_values(tmp_path, seed=0)).to_dict()
    for seed, top1 in ((0, 50.0), (1, 70.0)):
        run = tmp_path / f"seed={seed}"
        run.mkdir()
        config = {**full, "seed": seed}
        if seed == 0:
            del config["validation_split"]  # written by a release that did not have the option
        run.joinpath("config.yaml").write_text(yaml.safe_dump(config))
        run.joinpath("summary.json").write_text(json.dumps({"top1": top1}))
    rows = group_seeds([read_run(tmp_path / f"seed={seed}")[0] for seed in (0, 1)])
    assert len(rows) == 1 and rows[0]["seeds"] == 2 and rows[0]["score"] == 60.0
