"""Where a sweep's or a benchmark's runs train: one after another here, or as Ray tasks on a cluster.

``--ray`` (with ``--ray-address ADDR`` for a running cluster; a local Ray otherwise) makes every run a Ray task
that asks for ``--cpus-per-run`` CPUs and ``--gpus-per-run`` GPUs, so Ray places as many at once as the
cluster holds. Each task is the same ``train_run`` as without Ray, writing the same directory (the run
directories must be on a file system every node sees), so finished runs are skipped and unfinished ones resumed
on a rerun, and ``--shard`` still splits the runs beforehand. A run that fails is reported and tried once more
(a worker that dies is retried by Ray as well); the rows come back in the runs' order. torchrun stays the way to
use several GPUs inside one run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdaptFormerError
from ..objectives import primary_score
from ..train.config import TrainConfig
from ..utils.extras import require


def train_run(run_dir: Path, config: TrainConfig | dict[str, Any], name: str) -> dict[str, Any]:
    """Train one run in ``run_dir`` (a typed config, or flat options from a file or a search): skipped when
    finished, resumed when a checkpoint is there, started again when it died before its first checkpoint. A
    failing run (a diverging loss, say) is returned as a row, not raised, so the runs after it still run."""
    from ..train.loop import fit

    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        return {"run": name, "status": "done already", **_score(json.loads(summary_path.read_text()))}
    resume = (run_dir / "checkpoint.pt").exists()
    where = {"out": str(run_dir), "resume": resume, "overwrite": False}
    if isinstance(config, TrainConfig):
        cfg = dataclasses.replace(config, **where).validate()
    else:
        cfg = TrainConfig.from_flat({**config, **where}, source=f"run {name}")
    if not resume and any(run_dir.iterdir() if run_dir.exists() else []):
        cfg.overwrite = True
    try:
        summary = fit(cfg)
    except AdaptFormerError as error:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "train.log", "a") as log:  # the reason is in the run's own log, too
            log.write(f"error: {error}\n")
        return {"run": name, "status": "failed", "error": str(error)}
    return {"run": name, "status": "resumed" if resume else "trained", **_score(summary)}


def _score(summary: dict[str, Any]) -> dict[str, Any]:
    """A finished run's primary score (top-1, or mAP for multi-label runs) and its name."""
    return {"score": primary_score(summary), "metric": summary.get("metric", "top1")}


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # a running cluster (``ray start --head``), or None: a local Ray
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0

    def check(self) -> RayOptions:
        if not self.cpus_per_run > 0:
            raise AdaptFormerError(f"--cpus-per-run: expected a positive number, got {self.cpus_per_run}")
        if self.gpus_per_run < 0:
            raise AdaptFormerError(f"--gpus-per-run: expected a number >= 0, got {self.gpus_per_run}")
        return self


@dataclass(frozen=True)
class Job:
    run_dir: Path
    config: TrainConfig | dict[str, Any]
    name: str


def run_jobs(jobs: list[Job], ray: RayOptions | None = None) -> list[dict[str, Any]]:
    """Train every job (skip, resume); one status row per job, in order."""
    if ray is None:
        return [train_run(job.run_dir, job.config, job.name) for job in jobs]
    return _run_on_ray(jobs, ray.check())


def _train_job(run_dir: str, config: TrainConfig | dict[str, Any], name: str, threads: int) -> dict[str, Any]:
    """One run inside a Ray worker, with as many intra-op threads as the CPUs it was given."""
    import torch

    torch.set_num_threads(max(1, threads))
    return train_run(Path(run_dir), config, name)


def _run_on_ray(jobs: list[Job], options: RayOptions) -> list[dict[str, Any]]:
    ray = require("ray", "--ray")
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_retries=1)(_train_job)
    threads = int(options.cpus_per_run)

    def submit(job: Job):
        return remote.remote(str(job.run_dir), job.config, job.name, threads)

    pending = [submit(job) for job in jobs]  # Ray runs as many at once as the cluster has room for
    rows = [_result(ray, future, job) for future, job in zip(pending, jobs, strict=True)]
    retried = [i for i, row in enumerate(rows) if row["status"] == "failed"]
    again = {i: submit(jobs[i]) for i in retried}
    for i, future in again.items():
        first = rows[i].get("error")
        rows[i] = {**_result(ray, future, jobs[i]), "attempts": 2, "first_error": first}
    return rows


def _result(ray, future, job: Job) -> dict[str, Any]:
    try:
        return ray.get(future)
    except Exception as error:  # noqa: BLE001 - a worker that died twice, a task Ray could not run
        return {"run": job.name, "status": "failed", "error": f"on Ray: {type(error).__name__}: {error}"}
