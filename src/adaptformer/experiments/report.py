"""``adaptformer report RUN_DIRS... --out DIR``: tables and plots over training runs (a sweep's, or any).

For every run directory (``config.yaml`` + ``summary.json``; a run without a summary is partial) it reads the
configuration, the final and best score (top-1; mAP for multi-label runs), trainable parameters, wall time, peak
memory and the per-epoch test score. Runs that differ only in ``seed`` are one point with mean ± std. It writes
``report.md``, the same as one self-contained ``report.html`` (plots embedded), and PNG plots:

* ``accuracy_vs_params.png``: top-1 against trainable parameters per method (log x; the paper's Figure 1 style);
* ``accuracy_vs_<option>.png`` for every option that varies across the runs (bottleneck, layers, placement,
  scale, vpt_tokens, num_frames, ...), one line per method;
* ``curves.png``: per-epoch test top-1 of every run (e.g. VPT's stability with many tokens).

Directories without a readable configuration or metrics are listed as skipped; the rest is still rendered.
"""

from __future__ import annotations

import base64
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from ..data.registry import get_dataset
from ..errors import AdaptFormerError
from ..methods.registry import registered_methods
from ..objectives import METRIC_LABELS, get_objective
from ..runtime.metrics import read_metrics
from ..train.config import TrainConfig
from ..utils.atomic import atomic_write_text
from ..utils.extras import require

#: training options a sweep may vary (each method's own options come from the registry: ``report_axes``)
AXES = (
    "num_frames",
    "lr",
    "blr",
    "epochs",
    "dataset",
    "model",
)
IGNORED = {
    "seed",
    "out",
    "resume",
    "overwrite",
    "workers",
    "tensorboard",
    "eval_every",
    "checkpoint_every_steps",
    "device",
    "compile",
    "grad_checkpointing",
    "download",
    "verify",
    "data_root",
    "checkpoint",
}


def run_directories(paths: list[str | Path]) -> list[Path]:
    """Each path that is a run directory (it holds ``config.yaml``), else the run directories anywhere under it
    (a sweep's or a tune's folder); a path with neither is kept, to be reported as skipped."""
    found = []
    for path in map(Path, paths):
        if (path / "config.yaml").is_file() or not path.is_dir():
            found.append(path)
            continue
        under = sorted(config.parent for config in path.rglob("config.yaml"))
        found += under or [path]
    return list(dict.fromkeys(found))


def read_run(path: Path) -> tuple[dict | None, str | None]:
    """A run's figures, or (None, why it was skipped)."""
    config_file, summary_file, metrics_file = path / "config.yaml", path / "summary.json", path / "metrics.jsonl"
    if not config_file.is_file():
        return None, "no config.yaml"
    try:
        config = with_defaults(yaml.safe_load(config_file.read_text()) or {})
    except yaml.YAMLError:
        return None, "config.yaml is not valid YAML"
    summary = {}
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
        except json.JSONDecodeError:
            summary = {}
    metric = summary.get("metric") or metric_of(config)
    key = f"test_{metric}"
    curve = (
        [(r["epoch"], r[key]) for r in read_metrics(metrics_file) if r.get(key) is not None]
        if metrics_file.is_file()
        else []
    )
    if not summary and not curve:
        return None, "no summary.json and no evaluated epoch in metrics.jsonl"
    return {
        "name": path.name,
        "path": str(path),
        "config": config,
        "method": config.get("method", "?"),
        "metric": metric,  # top1, or mAP for multi-label runs
        "score": summary.get(metric, curve[-1][1] if curve else None),
        "best_score": summary.get(f"best_{metric}", max((t for _, t in curve), default=None)),
        "trainable": summary.get("trainable"),
        "seconds": summary.get("train_seconds"),
        "memory_mb": summary.get("peak_memory_mb"),
        "curve": curve,
        "complete": bool(summary),
    }, None


def metric_of(config: dict) -> str:
    """The primary score of a run by its dataset (a run killed before its summary was written)."""
    try:
        return get_objective(get_dataset(str(config.get("dataset"))).objective).metric
    except AdaptFormerError:
        return "top1"


def metric_label(rows: list[dict]) -> str:
    """How the rows' score is named in tables and plots: top-1 (%), mAP (%), or score when they differ."""
    metrics = {r.get("metric", "top1") for r in rows}
    return METRIC_LABELS.get(metrics.pop(), "score") if len(metrics) == 1 else "score"


def with_defaults(config: dict) -> dict:
    """The configuration with every option a newer release added at its default, so a run made before an option
    existed groups with the same run made after (a configuration that no longer validates is kept as it is)."""
    try:
        return {**TrainConfig.from_flat(config).to_dict(), **config}
    except (AdaptFormerError, TypeError):
        return config


def group_seeds(runs: list[dict]) -> list[dict]:
    """Runs equal but for their seed become one row: mean and std of top-1 over the seeds."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        key = json.dumps({k: v for k, v in run["config"].items() if k not in IGNORED}, sort_keys=True, default=str)
        groups[key].append(run)
    rows = []
    for members in groups.values():
        tops = [m["score"] for m in members if m["score"] is not None]
        first = members[0]
        rows.append(
            {
                **first,
                "name": first["name"].replace(f",seed={first['config'].get('seed')}", ""),
                "score": statistics.mean(tops) if tops else None,
                "std": statistics.stdev(tops) if len(tops) > 1 else 0.0,
                "seeds": len(members),
            }
        )
    return rows


def report_axes() -> list[str]:
    """Every method's own options (``MethodConfig.own_options``), then the training options of ``AXES``."""
    own = [name for method in registered_methods().values() for name in method.config.own_options()]
    return list(dict.fromkeys([*own, *AXES]))


def varying(rows: list[dict]) -> list[str]:
    """The options that take more than one value across the rows (the sweep's axes)."""
    return [axis for axis in report_axes() if len({json.dumps(r["config"].get(axis), default=str) for r in rows}) > 1]


def write_report(run_dirs: list[str | Path], out: str | Path) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, skipped = [], []
    for path in run_directories(run_dirs):
        run, why = read_run(path)
        (runs.append(run) if run else skipped.append((str(path), why)))
    rows = group_seeds(runs)
    axes = varying(rows)
    plots = []
    if rows:
        plots.append(_plot_params(rows, out / "accuracy_vs_params.png"))
        plots += [
            _plot_axis(rows, axis, out / f"accuracy_vs_{axis}.png") for axis in axes if axis not in ("dataset", "model")
        ]
        if any(r["curve"] for r in runs):
            plots.append(_plot_curves(runs, out / "curves.png"))
    markdown = _markdown(rows, axes, plots, skipped)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", html_page(markdown, out))
    return {"runs": len(runs), "rows": len(rows), "skipped": skipped, "plots": [p.name for p in plots], "axes": axes}


def _markdown(rows: list[dict], axes: list[str], plots: list[Path], skipped: list[tuple[str, str]]) -> str:
    shown = [a for a in axes if a not in ("model",)]
    header = ["run", "method", *shown, f"{metric_label(rows)} %", "best %", "trainable", "train s", "peak MB", "seeds"]
    lines = [
        "# adaptformer report",
        "",
        f"{len(rows)} configurations.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in sorted(rows, key=lambda r: (r["method"], -(r["score"] or 0))):
        top = "—" if r["score"] is None else f"{r['score']:.2f}" + (f" ± {r['std']:.2f}" if r["seeds"] > 1 else "")
        cells = [
            r["name"],
            r["method"],
            *[_cell(r["config"].get(a)) for a in shown],
            top,
            _num(r["best_score"], ".2f"),
            _num(r["trainable"], ","),
            _num(r["seconds"], ".0f"),
            _num(r["memory_mb"], ".0f"),
            str(r["seeds"]),
        ]
        if not r["complete"]:
            cells[0] += " (partial)"
        lines.append("| " + " | ".join(cells) + " |")
    for plot in plots:
        lines += ["", f"![{plot.stem}]({plot.name})"]
    if skipped:
        lines += ["", "Skipped:", *[f"- `{path}`: {why}" for path, why in skipped]]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return "—" if value is None else ("-".join(map(str, value)) if isinstance(value, list) else str(value))


def _num(value: Any, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def html_page(markdown: str, out: Path) -> str:
    """The markdown as one HTML file with the plots inlined (tables and images; no external assets)."""
    body = []
    for line in markdown.splitlines():
        if line.startswith("![") and "](" in line:
            name = line.split("](", 1)[1].rstrip(")")
            data = base64.b64encode((out / name).read_bytes()).decode()
            body.append(f'<p><img alt="{name}" src="data:image/png;base64,{data}" style="max-width:100%"></p>')
        elif line.startswith("|") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            tag = "th" if not body or not body[-1].startswith("<tr") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{_escape(c)}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("# "):
            body.append(f"<h1>{_escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{_escape(line[2:])}</li>")
        elif line and "---" not in line:
            body.append(f"<p>{_escape(line)}</p>")
    html, in_table = [], False
    for item in body:
        if item.startswith("<tr") and not in_table:
            html.append("<table>")
            in_table = True
        elif not item.startswith("<tr") and in_table:
            html.append("</table>")
            in_table = False
        html.append(item)
    if in_table:
        html.append("</table>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto}"
        "td,th{padding:.2rem .5rem;border-bottom:1px solid #ddd}"
    )
    head = f"<meta charset='utf-8'><title>adaptformer report</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(html)}</body></html>\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plt():
    matplotlib = require("matplotlib", "the report's plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_params(rows: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for method in sorted({r["method"] for r in rows}):
        points = [
            (r["trainable"], r["score"], r["std"])
            for r in rows
            if r["method"] == method and r["trainable"] and r["score"] is not None
        ]
        if points:
            x, y, err = zip(*sorted(points), strict=True)
            ax.errorbar(x, y, yerr=err, marker="o", linestyle="", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{metric_label(rows)} (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


LAYER_SPEC = re.compile(r"^(top|bottom):(\d+)(?:/(\d+))?$")


def _plot_layer_sides(rows: list[dict], path: Path) -> Path:
    """Layer ablations: one line per side (top-k, bottom-k) against k, the paper's layout."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for side in ("top", "bottom"):
        points = []
        for r in rows:
            match = LAYER_SPEC.match(_cell(r["config"].get("layers")))
            if match and match.group(1) == side and r["score"] is not None:
                points.append((int(match.group(2)), r["score"], r["std"], r["method"]))
        for method in sorted({p[3] for p in points}):
            xs, ys, err, _ = zip(*sorted(p for p in points if p[3] == method), strict=True)
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{method}, {side}-k")
    denominators = {LAYER_SPEC.match(_cell(r["config"].get("layers"))).group(3) for r in rows}
    of = next(iter(denominators)) if len(denominators) == 1 else None
    ax.set_xlabel(f"k (adapted blocks{f', out of {of}, scaled to the depth' if of else ''})")
    ax.set_ylabel(f"{metric_label(rows)} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_axis(rows: list[dict], axis: str, path: Path) -> Path:
    if axis == "layers" and all(LAYER_SPEC.match(_cell(r["config"].get("layers"))) for r in rows):
        return _plot_layer_sides(rows, path)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    values = sorted({_cell(r["config"].get(axis)) for r in rows}, key=_order)
    for method in sorted({r["method"] for r in rows}):
        by_value = {_cell(r["config"].get(axis)): r for r in rows if r["method"] == method and r["score"] is not None}
        xs = [i for i, v in enumerate(values) if v in by_value]
        if xs:
            ax.errorbar(
                xs,
                [by_value[values[i]]["score"] for i in xs],
                yerr=[by_value[values[i]]["std"] for i in xs],
                marker="o",
                capsize=3,
                label=method,
            )
    ax.set_xticks(range(len(values)), values, rotation=30 if max(map(len, values)) > 6 else 0)
    ax.set_xlabel(axis)
    ax.set_ylabel(f"{metric_label(rows)} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_curves(runs: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for run in runs:
        if run["curve"]:
            epochs, tops = zip(*run["curve"], strict=True)
            ax.plot(epochs, tops, marker=".", label=run["name"][:40])
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test {metric_label(runs)} (%)")
    ax.grid(True, alpha=0.3)
    if len(runs) <= 12:
        ax.legend(fontsize=6)
    return _save(fig, path)


def _order(text: str):
    """Numbers by value, then text in natural order (top:2 before top:12)."""
    try:
        return (0, float(text), [])
    except ValueError:
        return (1, math.inf, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path
