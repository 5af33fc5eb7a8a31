"""Evaluation shared by training, ``eval``, and ``pretrain``: top-1 / top-5 and loss, averaged over test views.

A batch's ``inputs`` are one view per sample, (B, C, H, W) or (B, C, T, H, W), or several views per sample with
a views dimension after B, (B, V, ...): the logits of a sample's V views (video's temporal clips x spatial
crops, or any test-time augmentation) are averaged before scoring, as in the paper's video protocol.
Under torchrun every rank scores its shard and the totals are summed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .runtime.distributed import all_reduce_sum
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
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of the (view-averaged) logits over the loader."""
    model.eval()
    k = min(5, num_classes)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@k, loss sum, count

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            return model(x)

    for batch in progress_bar(loader, desc="eval", unit="batch", leave=False, disable=not show_progress):
        if batch.inputs is None:
            continue
        inputs = batch.inputs.to(device, non_blocking=True)
        labels = batch.labels.to(device, non_blocking=True)
        logits = view_averaged_logits(forward, inputs, input_ndim)
        hits = logits.topk(k, dim=1).indices == labels[:, None]
        totals += torch.tensor(
            [
                hits[:, 0].sum().item(),
                hits.any(1).sum().item(),
                F.cross_entropy(logits, labels, reduction="sum").item(),
                len(labels),
            ],
            dtype=torch.float64,
            device=device,
        )
    correct1, correctk, loss, count = all_reduce_sum(totals).tolist()
    count = max(count, 1)
    return {"top1": 100 * correct1 / count, "top5": 100 * correctk / count, "loss": loss / count, "samples": int(count)}
