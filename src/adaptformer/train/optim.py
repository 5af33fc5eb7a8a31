"""Optimizer and learning-rate schedule of the recipe: SGD over what ``requires_grad``, warm-up + cosine."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn


def make_optimizer(params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over what the task trains (frozen weights never enter the optimizer state)."""
    return torch.optim.SGD([p for p in params if p.requires_grad], lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float = 0.0
) -> CosineLRScheduler:
    """Per-optimizer-step linear warm-up from 0, then a half cosine to ``min_lr`` at ``total_steps``.

    Call ``schedule.step_update(k)`` before optimizer step k (k = 0, 1, ...)."""
    schedule = CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps - warmup_steps),
        lr_min=min_lr,
        warmup_t=warmup_steps,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        cycle_limit=1,
        t_in_epochs=False,
    )
    schedule.step_update(0)
    return schedule


def scaled_lr(blr: float, effective_batch: int) -> float:
    """The paper's linear scaling rule: lr = blr * effective_batch / 256."""
    return blr * effective_batch / 256
