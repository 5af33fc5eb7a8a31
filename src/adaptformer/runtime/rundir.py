"""Run directories: never mix two runs in one, and resume only what was started with the same settings."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import AdaptFormerError

FAILED_START_LOG = "train.log"  # what a run refused before its first file leaves behind (it is appended to)


def prepare_run_dir(run_dir: Path, files: Iterable[str], resume: bool, overwrite: bool, is_main: bool = True) -> Path:
    """Refuse a directory that holds a run unless told to resume or overwrite (every rank checks, so none
    waits for another that failed); ``overwrite`` removes the run's own files, nothing else."""
    existing = [name for name in files if (run_dir / name).exists()]
    if resume and overwrite:
        raise AdaptFormerError("--resume and --overwrite exclude each other")
    # a run refused before it began (bad data, say) leaves only its log: trying again needs no --overwrite
    started = [name for name in existing if name != FAILED_START_LOG]
    if started and not resume and not overwrite:
        raise AdaptFormerError(
            f"--out {run_dir}: already holds a run ({', '.join(started[:3])}); "
            "pass --resume to continue it or --overwrite to replace it"
        )
    if is_main and existing and overwrite:
        for name in existing:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_torn_writes(run_dir)
    return run_dir


def remove_torn_writes(run_dir: Path) -> None:
    """Delete the temporary files of atomic writes a killed run left half written (``.<name>.<random>.tmp``;
    the files they were to replace are intact)."""
    for stale in run_dir.glob(".*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


def check_same_settings(saved: dict[str, Any], current: dict[str, Any], ignore: Iterable[str], path: Path) -> None:
    """A run resumes only with the settings it was started with (``ignore``: options that do not change what is
    trained, such as the number of workers)."""
    ignore = set(ignore)
    changed = [k for k in current if k not in ignore and saved.get(k) != current[k]]
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed[:3])
        raise AdaptFormerError(f"--resume: {path} was trained with other settings ({details})")
