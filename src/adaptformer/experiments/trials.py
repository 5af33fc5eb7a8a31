"""A search's trials, the same wherever they run (here or on Ray): what one search explores, one trial as the
decision and the table see it, the time spent across reruns, and the training of one trial."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdaptFormerError
from ..train.config import TrainConfig
from ..utils.atomic import atomic_write_text


@dataclass(frozen=True)
class Search:
    """What one search explores, the same here and on Ray: the flat base options, the axes, how trials are
    validated, the pruner, the seed of the sampler, and when to stop starting trials."""

    base: dict[str, Any]
    space: list[tuple[str, list[Any]]]
    validation: dict[str, Any]
    folds: int
    pruner: str
    seed: int
    time_budget: float | None
    trials: int | None
    start: dict[str, Any] | None = None  # the first trial: the base's own values on the axes

    @property
    def combinations(self) -> int:
        return math.prod(len(values) for _, values in self.space)

    def values(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's training options: the base, its axis values, and the validation it is scored on."""
        return {**self.base, **params, **self.validation}


@dataclass(frozen=True)
class Scored:
    """One trial as the decision and the table see it, wherever it ran."""

    number: int
    params: dict[str, Any]
    value: float | None
    status: str  # complete | pruned | failed | running | complete (as NNN): proposed again, not trained again
    epochs: int | None
    seconds: float | None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "run": f"{self.number:03d}",
            "values": dict(self.params),
            "status": self.status,
            "validation_score": self.value,
            "epochs": self.epochs,
            "seconds": None if self.seconds is None else round(self.seconds, 1),
            **({"error": self.error} if self.error else {}),
        }


class Clock:
    """The search's time across reruns: what earlier runs of this ``tune`` spent (``OUT/seconds.json``) plus this
    one's, so an interrupted search that goes on counts what it already spent against the budget."""

    def __init__(self, out: Path):
        self.path = out / "seconds.json"
        self.earlier = float(json.loads(self.path.read_text())["seconds"]) if self.path.exists() else 0.0
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.earlier + time.perf_counter() - self.started

    def remaining(self, budget: float | None) -> float | None:
        return None if budget is None else max(0.0, budget - self.seconds())

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"seconds": round(self.seconds(), 3)}) + "\n")  # a kill keeps the last


def run_trial(directory: Path, values: dict[str, Any], name: str, report=None) -> float:
    from ..train.loop import fit

    config = TrainConfig.from_flat({**values, "out": str(directory), "overwrite": True}, source=f"trial {name}")
    try:
        summary = fit(config, on_evaluated=report)
    except AdaptFormerError as error:
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "train.log", "a") as log:  # the reason is in the trial's own log, too
            log.write(f"error: {error}\n")
        raise
    best = summary.get(f"best_{summary.get('metric', 'top1')}")
    if best is None:
        raise AdaptFormerError(f"trial {name}: no validation score")
    return float(best)
