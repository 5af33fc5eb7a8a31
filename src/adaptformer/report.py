"""How many parameters a task trains, in total and per part."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ParameterReport:
    total: int  # backbone + the task's own modules
    trainable: int
    frozen: int
    adapters: int
    prompts: int
    head: int
    norms: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "percent": round(self.percent, 4)}


def parameter_report(model, task: str | None = None) -> ParameterReport:
    """Counts for one task of an :class:`~adaptformer.adapted.model.AdaptedModel` (the active one by default)."""
    return model.parameter_report(task)
