"""Evaluation shared by training, ``eval``, and ``pretrain``: the task objective's scores (top-1 / top-5, or mAP)
and loss, with logits averaged over test views.

A batch's ``inputs`` are one view per sample, (B, C, H, W) or (B, C, T, H, W), or several views per sample with
a views dimension after B, (B, V, ...): the logits of a sample's V views (video's temporal clips x spatial
crops, or any test-time augmentation) are averaged before scoring, as in the paper's video protocol.
Under torchrun every rank scores its shard and the totals are summed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .objectives import Objective, get_objective
from .runtime.precision import autocast
from .utils.progress import progress_bar


def view_averaged_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, input_ndim: int
) -> torch.Tensor:
    """``forward`` on (B, ...) inputs, or on every view of (B, V, ...) inputs with the logits averaged."""
    if inputs.ndim == input_ndim:
        return forward(inputs).float()
    if inputs.ndim != input_ndim + 1:
        raise ValueError(f"expected inputs with {input_ndim} or {input_ndim + 1} dimensions, got {tuple(inputs.shape)}")
    batch, views = inputs.shape[:2]
    logits = forward(inputs.flatten(0, 1)).float()
    return logits.view(batch, views, -1).mean(dim=1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    precision: str,
    num_classes: int,
    input_ndim: int = 4,
    show_progress: bool = False,
    objective: Objective | None = None,
) -> dict[str, Any]:
    """The objective's scores of the (view-averaged) logits over the loader: top-1 / top-5 accuracy (%) and mean
    cross-entropy for single-label tasks, mAP (%), per-class AP and mean binary cross-entropy for multi-label ones."""
    model.eval()
    scorer = (objective or get_objective(None)).scorer(num_classes, device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            return model(x)

    for batch in progress_bar(loader, desc="eval", unit="batch", leave=False, disable=not show_progress):
        if batch.inputs is None:
            continue
        inputs = batch.inputs.to(device, non_blocking=True)
        targets = batch.labels.to(device, non_blocking=True)
        scorer.add(view_averaged_logits(forward, inputs, input_ndim), targets)
    return scorer.result()
