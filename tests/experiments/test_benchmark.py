"""``adaptformer benchmark``: the runs of a suite, the papers' means (checked by hand), the report, resume after
a kill, the learning-rate search, and shards."""

import json

import pytest
import yaml

from adaptformer import AdaptFormerError
from adaptformer.cli import main
from adaptformer.experiments.benchmark import benchmark_runs, shard_runs, summarize, tasks_of
from adaptformer.methods.registry import benchmark_default_methods, method_names
from formats import write_vtab
from training_helpers import TINY_KWARGS, tiny_checkpoint


def test_group_means_and_the_two_overall_means_by_hand():
    groups = {"natural": ["a", "b"], "structured": ["c"]}
    table = summarize({"m": {"a": 50.0, "b": 70.0, "c": 90.0}}, groups)["m"]
    assert table["groups"] == {"natural": 60.0, "structured": 90.0}
    assert table["mean_of_groups"] == 75.0  # (60 + 90) / 2
    assert table["mean_of_tasks"] == 70.0  # (50 + 70 + 90) / 3
    partial = summarize({"m": {"a": 50.0, "c": 90.0}}, groups)["m"]
    assert partial["groups"] == {"natural": None, "structured": 90.0}
    assert partial["mean_of_groups"] is None and partial["mean_of_tasks"] is None


def test_dry_run_lists_every_vtab_run_with_its_command(capsys):
    args = ["benchmark", "vtab", "--data-root", "/data/vtab-1k", "--model", "vit_base_patch16_224", "--out", "b"]
    assert main([*args, "--checkpoint", "mae_pretrain_vit_base.pth", "--dry-run"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    defaults = benchmark_default_methods()  # the paper's baselines and the strongest adapter
    assert {"adaptformer", "linear", "vpt", "lora", "full", "adapterplus"} == set(defaults)
    count = 19 * len(defaults)
    assert len(lines) == count and f"{count} runs ({count} in all)" in captured.err
    assert lines[0].startswith("adaptformer train ") and "--dataset vtab/cifar" in lines[0]
    assert "--method adaptformer" in lines[0] and "--out b/cifar/adaptformer" in lines[0]
    assert "--checkpoint mae_pretrain_vit_base.pth" in lines[0] and "--epochs 100" in lines[0]
    full = [line for line in lines if "--method full" in line]
    assert len(full) == 19 and all("--blr 0.01" in line for line in full)
    assert main(["benchmark", "fgvc", *args[2:], "--dry-run", "--methods", "lora,linear"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 10
    assert main([*args, "--dry-run", "--methods", "all"]) == 0  # every registered method
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 19 * len(method_names()) and sum("--method fact-tk " in line for line in lines) == 19


def test_bad_choices_are_one_line():
    with pytest.raises(AdaptFormerError, match="benchmark: expected one of vtab, fgvc"):
        tasks_of("vtab2")
    with pytest.raises(AdaptFormerError, match="--tasks: cifar100 not in vtab"):
        tasks_of("vtab", ["cifar100"])
    with pytest.raises(AdaptFormerError, match="--methods: expected some of adaptformer, linear, vpt, .*got lorax"):
        benchmark_runs("vtab", "d", "vit_base_patch16_224", ["lorax"])


def test_missing_data_is_one_line_before_any_run(tmp_path, capsys):
    root = write_vtab(tmp_path / "vtab-1k", tasks=("dtd",))
    args = ["benchmark", "vtab", "--data-root", str(root), "--model", "vit_base_patch16_224", "--out", str(tmp_path)]
    assert main([*args, "--tasks", "dtd,kitti,eurosat", "--methods", "linear"]) == 2
    assert "no eurosat/, kitti/ (needed by the runs)" in capsys.readouterr().err
    assert main([*args[:3], str(tmp_path / "nope"), *args[4:], "--methods", "linear"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_warm_up_follows_the_epochs():
    runs = benchmark_runs("fgvc", "d", "vit_base_patch16_224", ["linear"])
    assert runs[0].values["warmup_epochs"] == 10 and runs[0].values["epochs"] == 100
    short = benchmark_runs("fgvc", "d", "vit_base_patch16_224", ["linear"], {"epochs": 5})
    assert short[0].values["warmup_epochs"] == 0.5


def test_shards_split_by_task_and_method():
    runs = benchmark_runs("vtab", "d", "vit_base_patch16_224", ["adaptformer", "linear"], seeds=2, tune=True)
    parts = [shard_runs(runs, f"{i}/3") for i in range(3)]
    assert sorted(r.directory for part in parts for r in part) == sorted(r.directory for r in runs)
    for part in parts:  # a pair's search and seeds never straddle shards
        pairs = {(r.task, r.method) for r in part}
        assert all(sum((r.task, r.method) == pair for r in part) == 4 + 2 for pair in pairs)


def tiny_args(tmp_path, root, *extra):
    args = ["benchmark", "vtab", "--data-root", str(root), "--model", "vit_tiny_patch16_224"]
    args += ["--checkpoint", str(tiny_checkpoint(tmp_path)), "--out", str(tmp_path / "bench")]
    sets = dict(epochs=1, warmup_epochs=0, batch_size=4, effective_batch=4, workers=0, precision="fp32")
    sets.update(tensorboard=False, model_kwargs=json.dumps(TINY_KWARGS))
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return [*args, *extra]


def test_benchmark_trains_reports_and_resumes(tmp_path, capsys):
    root = write_vtab(tmp_path / "vtab-1k", tasks=("eurosat", "dtd"))
    args = tiny_args(tmp_path, root, "--methods", "adaptformer,linear", "--tasks", "dtd,eurosat")
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["run"], r["status"]) for r in rows] == [
        ("dtd/adaptformer", "trained"),
        ("dtd/linear", "trained"),
        ("eurosat/adaptformer", "trained"),
        ("eurosat/linear", "trained"),
    ]  # the papers' column order: natural (dtd) before specialized (eurosat)
    report = (tmp_path / "bench" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| method"))
    assert header.split(" | ")[1:5] == ["dtd", "eurosat", "natural mean", "specialized mean"]
    figures = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    for method in ("adaptformer", "linear"):
        top1 = figures["top1"][method]
        summary = figures["summary"][method]
        assert summary["groups"] == {"natural": top1["vtab/dtd"], "specialized": top1["vtab/eurosat"]}
        assert summary["mean_of_tasks"] == pytest.approx((top1["vtab/dtd"] + top1["vtab/eurosat"]) / 2)
    assert figures["trainable"]["adaptformer"] > figures["trainable"]["linear"]
    assert (tmp_path / "bench" / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    # a kill after a run's last checkpoint: the rerun resumes that run and skips the others
    (tmp_path / "bench" / "eurosat" / "linear" / "summary.json").unlink()
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["status"] for r in rows] == ["done already", "done already", "done already", "resumed"]


def test_tune_searches_the_lr_on_the_tuning_split_then_trains_the_final_run(tmp_path, capsys):
    root = write_vtab(tmp_path / "vtab-1k", tasks=("eurosat",))
    assert main(tiny_args(tmp_path, root, "--methods", "linear", "--tasks", "eurosat", "--tune")) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["run"] for r in rows] == [f"eurosat/linear/tune/lr={lr}" for lr in ("0.003", "0.01", "0.03", "0.1")] + [
        "eurosat/linear"
    ]
    searched = {}
    for lr in ("0.003", "0.01", "0.03", "0.1"):
        run = tmp_path / "bench" / "eurosat" / "linear" / "tune" / f"lr={lr}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["evaluated_on"] == "validation (the benchmark's tuning split)"
        searched[float(lr)] = summary["top1"]
    best = max(searched.items(), key=lambda item: (item[1], -item[0]))[0]
    final = yaml.safe_load((tmp_path / "bench" / "eurosat" / "linear" / "config.yaml").read_text())
    assert final["lr"] == best and final["benchmark_split"] == "final"
    assert "learning rate searched" in (tmp_path / "bench" / "report.md").read_text()
