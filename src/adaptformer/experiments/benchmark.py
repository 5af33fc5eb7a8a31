"""``adaptformer benchmark vtab|fgvc``: every task x method of a benchmark as one resumable sweep, then one report
in the papers' layout.

Runs are ``OUT/<task>/<method>`` (``.../seed=K`` with ``--seeds``), trained with the sweep machinery
(``experiments/dispatch.train_run``): a rerun skips finished runs and resumes unfinished ones, ``--shard i/n``
splits the runs over machines. Every run uses the same fixed hyper-parameters (``FIXED``: the protocol most
comparisons use, so methods differ only in what they train), with the benchmark's own preprocessing
(``data/vtab.py``, ``data/fgvc.py``); ``--set FIELD=VALUE`` changes them for every run. ``--tune`` adds a
learning-rate search per task and method on the tuning split (train800 -> val200, FGVC train -> val), then trains
the final run at the best rate: a different protocol from fixed hyper-parameters, and reported as such.

The report (``report.md``, ``report.html``, ``accuracy_vs_params.png``) has one row per method: top-1 per task,
each group's mean, the mean of the group means and the mean of every task (papers use either; both are given),
trainable parameters (of the first task's run) and the summed wall time.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.fgvc import FGVC_DATASETS
from ..data.vtab import VTAB_GROUPS
from ..errors import AdaptFormerError
from ..methods.registry import get_method, method_names
from ..train.config import TrainConfig
from ..utils.atomic import atomic_write_json, atomic_write_text
from ..utils.extras import require
from ..utils.options import is_int
from .dispatch import Job, run_jobs
from .report import html_page, read_run
from .sweep import shard

#: benchmark -> group -> dataset names (``--dataset``) in the papers' column order
SUITES: dict[str, dict[str, list[str]]] = {
    "vtab": {group: [f"vtab/{task}" for task in tasks] for group, tasks in VTAB_GROUPS.items()},
    "fgvc": {"fgvc": [f"fgvc/{name}" for name in FGVC_DATASETS]},
}
#: the fixed hyper-parameters of every run (SGD momentum 0.9 + warm-up + cosine, as all training here)
FIXED: dict[str, Any] = {"epochs": 100, "batch_size": 64, "effective_batch": 64, "blr": 0.1}
WARMUP_SHARE = 0.1  # of the epochs: 10 of 100, unless --set warmup_epochs=...
TUNE_LRS = (0.003, 0.01, 0.03, 0.1)


@dataclass(frozen=True)
class BenchmarkRun:
    task: str  # the dataset name, e.g. vtab/dtd
    method: str
    seed: int
    directory: str  # relative to the benchmark's --out
    values: dict[str, Any]  # flat training options
    pair: str  # the task and method's folder (``dtd/lora``): its search runs are under ``pair/tune``
    search: bool = False  # a learning-rate search run (tuning split), not a final run
    config: TrainConfig | None = None  # the flat options typed and validated once (``benchmark_runs``)


def tasks_of(suite: str, only: list[str] | None = None) -> list[str]:
    """The suite's datasets in column order (``only``: a subset, by short name or dataset name)."""
    if suite not in SUITES:
        raise AdaptFormerError(f"benchmark: expected one of {', '.join(SUITES)}, got {suite!r}")
    every = [task for tasks in SUITES[suite].values() for task in tasks]
    if not only:
        return every
    short = {task.split("/", 1)[1]: task for task in every}
    wrong = [name for name in only if name not in short and name not in every]
    if wrong:
        raise AdaptFormerError(f"--tasks: {', '.join(wrong)} not in {suite} (expected some of {', '.join(short)})")
    chosen = {short.get(name, name) for name in only}
    return [task for task in every if task in chosen]


def benchmark_runs(
    suite: str,
    data_root: str,
    model: str,
    methods: list[str],
    overrides: dict[str, Any] | None = None,
    seeds: int = 1,
    only: list[str] | None = None,
    tune: bool = False,
) -> list[BenchmarkRun]:
    """Every final run (and with ``tune``, every search run first), each configuration validated up front."""
    if not is_int(seeds, 1):
        raise AdaptFormerError(f"--seeds: expected a positive integer, got {seeds!r}")
    known = method_names()
    wrong = [m for m in methods if m not in known]
    if not methods or wrong:
        got = f", got {', '.join(wrong)}" if wrong else ""
        raise AdaptFormerError(f"--methods: expected some of {', '.join(known)}{got}")
    runs = []
    for task in tasks_of(suite, only):
        for method in methods:
            fixed = get_method(method).config.benchmark_options  # e.g. full fine-tuning's tenth of the rate
            base = {**FIXED, **fixed, "dataset": task, "data_root": data_root}
            base.update({"model": model, "method": method, **(overrides or {})})
            base.setdefault("warmup_epochs", round(WARMUP_SHARE * base["epochs"], 3))
            pair = f"{task.split('/', 1)[1]}/{method}"
            if tune:
                for lr in TUNE_LRS:
                    values = {**base, "lr": lr, "benchmark_split": "tune"}
                    directory = f"{pair}/tune/lr={lr:g}"
                    runs.append(_checked(BenchmarkRun(task, method, 0, directory, values, pair, search=True)))
            for seed in range(seeds):
                values = {**base, "seed": base.get("seed", 0) + seed}
                directory = pair if seeds == 1 else f"{pair}/seed={values['seed']}"
                runs.append(_checked(BenchmarkRun(task, method, values["seed"], directory, values, pair)))
    return runs


def _checked(run: BenchmarkRun) -> BenchmarkRun:
    """The run with its typed config (every run is validated before any starts; it then trains with it)."""
    return dataclasses.replace(run, config=TrainConfig.from_flat(run.values, source=f"benchmark run {run.directory}"))


def check_data(data_root: str | Path, runs: list[BenchmarkRun]) -> None:
    """Every task folder the runs need is under ``data_root``, or one line naming the missing ones (before hours of
    training find out one by one)."""
    root = Path(data_root)
    if not root.is_dir():
        raise AdaptFormerError(f"--data-root {root}: no such directory")
    missing = sorted({folder for folder in map(_folder_of, {run.task for run in runs}) if not (root / folder).is_dir()})
    if missing:
        raise AdaptFormerError(f"--data-root {root}: no {', '.join(f + '/' for f in missing)} (needed by the runs)")


def _folder_of(task: str) -> str:
    suite, name = task.split("/", 1)
    return FGVC_DATASETS[name].folder if suite == "fgvc" else name


def shard_runs(runs: list[BenchmarkRun], spec: str | None) -> list[BenchmarkRun]:
    """``i/n`` as for sweeps, over (task, method) pairs: a pair's seeds and learning-rate search stay together
    (its final run needs its search)."""
    pairs = list(dict.fromkeys((run.task, run.method) for run in runs))
    mine = set(shard(pairs, spec))
    return [run for run in runs if (run.task, run.method) in mine]


def command_line(run: BenchmarkRun, out: str | Path) -> str:
    """The ``adaptformer train`` command that trains this run alone (what ``--dry-run`` prints)."""
    parts = ["adaptformer", "train"]
    for key, value in run.values.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            parts += [flag, str(value)]
    return " ".join([*parts, "--out", str(Path(out) / run.directory)])


def best_tuned_lr(out: Path, run: BenchmarkRun) -> float | None:
    """The search's winner for this task and method (highest val top-1; ties keep the smaller rate)."""
    scores = []
    for lr in TUNE_LRS:
        found, _ = read_run(out / run.pair / "tune" / f"lr={lr:g}")
        if found and found["complete"] and found["score"] is not None:
            scores.append((found["score"], -lr))
    return -max(scores)[1] if scores else None


def run_benchmark(runs: list[BenchmarkRun], out: str | Path, ray=None) -> list[dict]:
    """Train (skip, resume) every run, here or on Ray (``dispatch.RayOptions``): the learning-rate search runs
    first, then the final runs (one after a search trains at the search's best rate)."""

    out = Path(out)
    rows: dict[str, dict] = {}
    searches = [run for run in runs if run.search]
    for run, row in zip(searches, run_jobs([_job(out, run, run.config) for run in searches], ray), strict=True):
        rows[run.directory] = row
    finals, jobs = [], []
    for run in (run for run in runs if not run.search):
        config = run.config or _checked(run).config
        if any(r.search and r.pair == run.pair for r in runs):
            lr = best_tuned_lr(out, run)
            if lr is None:
                rows[run.directory] = {"run": run.directory, "status": "failed", "error": "no finished search run"}
                continue
            config = dataclasses.replace(config, lr=lr)
        finals.append(run)
        jobs.append(_job(out, run, config))
    for run, row in zip(finals, run_jobs(jobs, ray), strict=True):
        rows[run.directory] = row
    return [rows[run.directory] for run in runs if run.directory in rows]


def _job(out: Path, run: BenchmarkRun, config):
    return Job(out / run.directory, config or _checked(run).config, run.directory)


# ---- the report -------------------------------------------------------------------------------------------------
def summarize(results: dict[str, dict[str, float | None]], groups: dict[str, list[str]]) -> dict[str, dict]:
    """Per method: each group's mean, the mean of the group means and the mean of every task. A mean over a
    group with a missing task is None (a partial row must not pass for a full one)."""
    table = {}
    for method, by_task in results.items():
        group_means = {}
        for group, tasks in groups.items():
            values = [by_task.get(task) for task in tasks]
            group_means[group] = statistics.fmean(values) if all(v is not None for v in values) else None
        every = [by_task.get(task) for tasks in groups.values() for task in tasks]
        complete = all(v is not None for v in every)
        table[method] = {
            "groups": group_means,
            "mean_of_groups": statistics.fmean(group_means.values()) if complete else None,
            "mean_of_tasks": statistics.fmean(every) if complete else None,
        }
    return table


def collect(out: Path, runs: list[BenchmarkRun]) -> dict[str, Any]:
    """Top-1 per method and task (mean over seeds), trainable parameters and wall time, from the run folders."""
    scores: dict[str, dict[str, list[float]]] = {}
    params: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for run in runs:
        if run.search:
            seconds[run.method] = seconds.get(run.method, 0.0) + _seconds(out / run.directory)
            continue
        found, _ = read_run(out / run.directory)
        if not found or not found["complete"]:
            continue
        scores.setdefault(run.method, {}).setdefault(run.task, []).append(found["score"])
        params.setdefault(run.method, found["trainable"])
        seconds[run.method] = seconds.get(run.method, 0.0) + (found["seconds"] or 0.0)
    top1 = {m: {t: statistics.fmean(v) for t, v in by_task.items()} for m, by_task in scores.items()}
    return {"top1": top1, "trainable": params, "seconds": seconds}


def _seconds(run_dir: Path) -> float:
    found, _ = read_run(run_dir)
    return (found or {}).get("seconds") or 0.0


def write_benchmark_report(suite: str, runs: list[BenchmarkRun], out: str | Path) -> dict[str, Any]:
    out = Path(out)
    tasks = list(dict.fromkeys(run.task for run in runs))
    groups = {g: [t for t in members if t in tasks] for g, members in SUITES[suite].items()}
    groups = {g: members for g, members in groups.items() if members}
    methods = list(dict.fromkeys(run.method for run in runs))
    found = collect(out, runs)
    table = summarize({m: found["top1"].get(m, {}) for m in methods}, groups)
    tuned = any(run.search for run in runs)
    markdown = _markdown(suite, groups, methods, found, table, tuned, len({r.seed for r in runs}))
    plot = _plot(methods, found, table, out / "accuracy_vs_params.png")
    if plot is not None:
        markdown += f"\n![accuracy vs parameters]({plot.name})\n"
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", html_page(markdown, out))
    figures = {"suite": suite, "tuned": tuned, **found, "summary": table}
    atomic_write_json(out / "benchmark.json", figures)
    return figures


def _markdown(suite, groups, methods, found, table, tuned, seeds) -> str:
    protocol = (
        "learning rate searched per task and method on the tuning split, then the final run"
        if tuned
        else "fixed hyper-parameters for every task"
    )
    lines = [
        f"# {suite.upper()} benchmark",
        "",
        f"Top-1 % on the test split ({protocol}; mean over {seeds} seed(s)). "
        "Means over a group with a missing task are left empty.",
        "",
    ]
    columns = [task.split("/", 1)[1] for members in groups.values() for task in members]
    group_names = list(groups)
    header = ["method", *columns, *[f"{g} mean" for g in group_names]]
    if len(groups) > 1:
        header += ["mean of groups"]
    header += ["mean of tasks", "trainable", "wall time (s)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        scores = found["top1"].get(method, {})
        cells = [method, *[_pct(scores.get(t)) for members in groups.values() for t in members]]
        cells += [_pct(table[method]["groups"][g]) for g in group_names]
        if len(groups) > 1:
            cells.append(_pct(table[method]["mean_of_groups"]))
        cells.append(_pct(table[method]["mean_of_tasks"]))
        trainable = found["trainable"].get(method)
        cells += [f"{trainable:,}" if trainable else "—", f"{found['seconds'].get(method, 0.0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _plot(methods, found, table, path: Path) -> Path | None:
    points = [
        (m, found["trainable"][m], table[m]["mean_of_tasks"] or _partial_mean(found["top1"].get(m, {})))
        for m in methods
        if found["trainable"].get(m) and found["top1"].get(m)
    ]
    if not points:
        return None
    matplotlib = require("matplotlib", "the benchmark's plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, params, top1 in points:
        ax.scatter(params, top1, s=40)
        ax.annotate(method, (params, top1), textcoords="offset points", xytext=(5, 4))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("mean top-1 % over the tasks run")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _partial_mean(scores: dict[str, float]) -> float:
    return statistics.fmean(scores.values())
