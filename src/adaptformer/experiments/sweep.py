"""``adaptformer sweep SWEEP.yaml --out DIR``: run the product of a grid (and/or explicit points) of training runs.

A sweep file::

    base: {dataset: digits, model: adaptformer/vit-tiny-cifar10, epochs: 15, ...}   # training options
    grid: {bottleneck: [1, 2, 4, 8], placement: [parallel, sequential]}              # every combination
    points: [{method: linear}, {method: full, lr: 0.025}]                             # optional explicit runs

``--set field=value`` (repeatable) replaces a ``base`` field, e.g. to run a packaged ablation on your dataset.

Runs are ``base`` + each point (or none) + each grid combination, each repeated over ``--seeds``; each gets a
directory under DIR named by its varied values (``bottleneck=4,placement=parallel,seed=0``). Every run's
configuration is validated before any starts (unknown fields, wrong types, empty grids: one line naming the
field). A rerun skips finished runs (``summary.json``) and resumes unfinished ones (``checkpoint.pt``) with the
training loop's ``--resume``. A run that fails (a diverging loss, say) is reported and the others still run.
``--shard i/n`` takes every n-th run starting at i, so n shells or a SLURM array
split a sweep with no coordinator; each run may itself be under torchrun.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdaptFormerError
from ..train.config import TrainConfig, config_search_path, read_yaml_mapping
from ..utils.options import is_int
from .dispatch import Job, run_jobs

SWEEP_KEYS = ("base", "grid", "points")


@dataclass(frozen=True)
class Run:
    name: str  # the directory name: the varied values
    values: dict[str, Any]  # the flat training options of this run (what the file said: for names and commands)
    varied: dict[str, Any]
    config: TrainConfig  # the same, typed and validated once: what the run trains with


def load_sweep(name: str, seeds: int = 1, overrides: dict[str, Any] | None = None) -> list[Run]:
    """The runs of a sweep file (a path or a packaged ``sweeps/<name>``), every one validated. ``overrides``
    replace fields of ``base`` (``--set dataset=lfw-faces`` runs a packaged ablation on another dataset)."""
    path = _sweep_path(name)
    data = read_yaml_mapping(path, "sweep")
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise AdaptFormerError(
            f"sweep {path}: unknown section(s) {', '.join(unknown)} (expected {', '.join(SWEEP_KEYS)})"
        )
    base = {**_mapping(data.get("base") or {}, f"sweep {path}: base"), **(overrides or {})}
    grid = _mapping(data.get("grid") or {}, f"sweep {path}: grid")
    for field, values in grid.items():
        if not isinstance(values, list) or not values:
            raise AdaptFormerError(f"sweep {path}: grid.{field}: expected a non-empty list of values, got {values!r}")
    points = data.get("points") or [{}]
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise AdaptFormerError(f"sweep {path}: points: expected a list of mappings of options")
    if not is_int(seeds, 1):
        raise AdaptFormerError(f"--seeds: expected a positive integer, got {seeds!r}")
    runs = []
    for point in points:
        for combo in itertools.product(*grid.values()) if grid else [()]:
            for seed in range(seeds):
                varied = {**point, **dict(zip(grid, combo, strict=True))}
                if seeds > 1:
                    varied["seed"] = base.get("seed", 0) + seed
                values = {**base, **varied}
                # every run is checked before any starts, and keeps its typed config
                config = TrainConfig.from_flat(values, source=f"sweep {path}: run {_name(varied) or 'base'}")
                runs.append(Run(_name(varied) or "base", values, varied, config))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise AdaptFormerError(f"sweep {path}: runs would share a directory ({', '.join(repeated[:3])})")
    return runs


def shard(runs: list[Run], spec: str | None) -> list[Run]:
    """``i/n``: every n-th run starting at run i (0-based)."""
    if not spec:
        return runs
    match = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not match or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        raise AdaptFormerError(f"--shard {spec!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    return runs[index::count]


def run_sweep(
    name: str,
    out: str | Path,
    shard_spec: str | None = None,
    seeds: int = 1,
    overrides: dict | None = None,
    ray=None,
) -> list[dict]:
    """Run (or skip, or resume) every run of this shard, here or on Ray (``dispatch.RayOptions``); returns one
    status row per run."""
    out = Path(out)
    runs = shard(load_sweep(name, seeds, overrides), shard_spec)
    return run_jobs([Job(out / run.name, run.config, run.name) for run in runs], ray)


def _sweep_path(name: str) -> Path:
    candidate = Path(name)
    if candidate.is_file():
        return candidate
    try:
        return config_search_path(f"sweeps/{name}")
    except AdaptFormerError:
        raise AdaptFormerError(f"sweep {name}: no such file or packaged sweep") from None


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise AdaptFormerError(f"{where}: expected a mapping of option: value")
    return value


def _name(varied: dict[str, Any]) -> str:
    parts = [f"{k}={_text(v)}" for k, v in varied.items()]
    return re.sub(r"[^A-Za-z0-9_.=,:+-]", "_", ",".join(parts))


def _text(value: Any) -> str:
    return "-".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
