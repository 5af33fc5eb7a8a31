"""``adaptformer demo``: every method on one small real dataset, offline, with a table, report and plot."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from .errors import AdaptFormerError
from .train.config import config_search_path, make_config
from .utils.atomic import atomic_write_text
from .utils.extras import require


def load_demo_config(name: str = "demo") -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    path = config_search_path(name)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data.get("base"), dict) or not isinstance(data.get("methods"), dict):
        raise AdaptFormerError(f"--config {path}: a demo config needs 'base' and 'methods' mappings")
    return data["base"], data["methods"]


def run_demo(
    out: str | Path = "demo-report",
    config: str = "demo",
    methods: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    base, per_method = load_demo_config(config)
    names = methods or list(per_method)
    unknown = [m for m in names if m not in per_method]
    if unknown:
        raise AdaptFormerError(f"--methods: {', '.join(unknown)} not in the demo config ({', '.join(per_method)})")
    out = Path(out)
    from .train.loop import fit

    rows = []
    for name in names:
        cfg = make_config(
            {**base, **per_method[name]}, {**(overrides or {}), "out": str(out / "runs" / name), "overwrite": True}
        )
        began = time.time()
        summary = fit(cfg)
        summary["wall_seconds"] = round(time.time() - began, 1)
        summary["label"] = cfg.method_config.title()
        summary["settings"] = {k: v for k, v in per_method[name].items() if k != "method"}
        rows.append(summary)
    table = format_table(rows)
    print(table)
    write_report(out, rows, base, table)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<18} {'top-1 %':>8} {'top-5 %':>8} {'trainable':>11} {'% of model':>10} {'train s':>8}"]
    for r in rows:
        lines.append(
            f"{r['label']:<18} {r['top1']:>8.2f} {r['top5']:>8.2f} {r['trainable']:>11,} "
            f"{r['trainable_percent']:>10.2f} {r['train_seconds']:>8.1f}"
        )
    return "\n".join(lines)


def write_report(out: Path, rows: list[dict[str, Any]], base: dict[str, Any], table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot_path = out / "accuracy_vs_params.png"
    plot_accuracy_vs_params(rows, plot_path, title=f"{base.get('dataset')} on {base.get('model')}")
    settings = "\n".join(f"| {r['label']} | {', '.join(f'{k}={v}' for k, v in r['settings'].items())} |" for r in rows)
    shared = ", ".join(f"{k}={v}" for k, v in base.items())
    report = f"""# AdaptFormer demo: {base.get("dataset")} on `{base.get("model")}`

```
{table}
```

![top-1 vs trainable parameters](accuracy_vs_params.png)

Shared settings: {shared}.

| method | settings |
|---|---|
{settings}

Each method's run directory (config.yaml, metrics.jsonl, train.log, best/last task files) is under `runs/`.
"""
    atomic_write_text(out / "report.md", report)


def plot_accuracy_vs_params(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    matplotlib = require("matplotlib", "the demo's plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ordered = sorted(rows, key=lambda r: r["trainable"])
    for i, r in enumerate(ordered):
        ax.scatter(r["trainable"], r["top1"], s=60, zorder=3)
        # alternate labels left-above / right-below so neighbours with close parameter counts stay readable
        ax.annotate(
            f"{r['label']}: {r['top1']:.1f} %",
            (r["trainable"], r["top1"]),
            textcoords="offset points",
            xytext=(-7, 5) if i % 2 == 0 else (7, -11),
            ha="right" if i % 2 == 0 else "left",
            fontsize=8,
        )
    ax.set_xscale("log")
    counts = [r["trainable"] for r in rows]
    ax.set_xlim(min(counts) / 20, max(counts) * 20)
    tops = [r["top1"] for r in rows]
    ax.set_ylim(min(tops) - 5, min(100.5, max(tops) + 4))
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
