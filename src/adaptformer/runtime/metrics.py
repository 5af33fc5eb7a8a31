"""Metrics a user can plot: one JSON object per line in ``metrics.jsonl`` plus TensorBoard scalars."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_write_text
from ..utils.extras import install_hint


class MetricsLogger:
    """Append-only metrics sink. Only rank 0 should create one (others pass ``enabled=False``)."""

    def __init__(
        self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True, resumed_at: int | None = None
    ):
        """``resumed_at``: the step of the checkpoint a resumed run continues from. Lines logged after it by the
        interrupted run (and a line torn by the kill) are dropped, so the resumed run does not log them twice."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._writer = None
        if enabled and resumed_at is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resumed_at]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # the [report] extra is missing: metrics.jsonl still holds every figure
                logging.getLogger("adaptformer.train").warning(
                    "TensorBoard scalars skipped: %s", install_hint("tensorboard")
                )
                self._writer = None

    def log(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` back; a torn last line (killed mid-write) is ignored."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
