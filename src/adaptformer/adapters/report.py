"""How many parameters a method trains, in total and per part."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn


@dataclass(frozen=True)
class ParameterReport:
    total: int
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


def parameter_report(model: nn.Module) -> ParameterReport:
    """Count parameters by what they are: adapters, prompts, head, trainable norms, frozen backbone."""
    groups = dict(adapters=0, prompts=0, head=0, norms=0)
    total = trainable = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if not param.requires_grad:
            continue
        trainable += param.numel()
        if ".adaptmlp." in name:
            groups["adapters"] += param.numel()
        elif name.startswith("embeddings."):
            groups["prompts"] += param.numel()
        elif name.startswith("head."):
            groups["head"] += param.numel()
        elif name.startswith("fc_norm."):
            groups["norms"] += param.numel()
    return ParameterReport(total=total, trainable=trainable, frozen=total - trainable, **groups)
