"""What every route of one server shares: the task bank, the batcher and the decode pool, the metrics, the
settings and the task directory, with the two checks several routes make (a task name that can answer, a listing
row as clients see it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException

from ..bank import TASK_NAME, TaskBank
from .batcher import Batcher
from .decoding import DecodePool
from .metrics import ServerMetrics
from .settings import ServeSettings


@dataclass
class Server:
    bank: TaskBank
    batcher: Batcher
    pool: DecodePool
    metrics: ServerMetrics
    settings: ServeSettings
    root: Path | None  # the task directory, resolved (None: no directory)
    scrub: Callable[[str], str]  # shortens absolute paths in messages

    def known(self, name: str) -> None:
        """404 unless ``name`` is a usable task (a listed but unusable one with its reason)."""
        bank = self.bank
        reason = bank.unusable_reason(name) if TASK_NAME.fullmatch(name) else None
        if reason is not None:
            raise HTTPException(404, f"task {name!r}: listed but unusable: {reason}")
        if not (TASK_NAME.fullmatch(name) and bank.has(name)):
            shown = ", ".join(bank.tasks[:10]) + (" ..." if len(bank.tasks) > 10 else "")
            raise HTTPException(404, f"task {name[:80]!r}: no such task (loaded: {shown or 'none'})")

    def public(self, row: dict) -> dict:
        """A task listing row with its file named relative to the task directory (or by its name only)."""
        path = Path(row["file"])
        try:
            shown = str(path.resolve().relative_to(self.root)) if self.root is not None else path.name
        except ValueError:
            shown = path.name
        out = {**row, "file": shown}
        if "error" in out:
            out["error"] = self.scrub(out["error"])
        return out
