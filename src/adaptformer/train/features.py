"""Linear probing on features computed once: the frozen backbone runs over each image a few times, not every epoch.

A linear probe changes nothing before the head, so the pooled features of an image depend only on its input.
``cache_features`` computes them up front and :class:`FeatureHead` trains the task's head on them, in the same
optimizer steps and order as the full forward would. Without augmentation one pass suffices (and training is
the same as without the cache). With augmentation, ``views`` augmented copies of the training set are encoded
(from a seed of their own, so a resumed run sees the same ones) and epoch e trains on copy e mod views. The test
split is encoded once, with the evaluation transform. The task files written are the usual ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from ..adapted.model import AdaptedModel
from ..data.loading import ShardSampler, Unreadable, make_loader
from ..runtime.distributed import DistInfo
from ..runtime.precision import autocast
from ..utils.progress import progress_bar


class FeatureHead(nn.Module):
    """The active task's head over cached pooled features (fc_norm, BatchNorm, Linear)."""

    def __init__(self, model: AdaptedModel):
        super().__init__()
        self.model = model

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.task.forward_head(pooled)


class CachedFeatures(Dataset):
    """Features of one or more encoded copies (views) of a split; ``set_epoch`` picks the copy."""

    def __init__(self, views: list[torch.Tensor], labels: torch.Tensor):
        self.views, self.labels, self.view = views, labels, 0

    def set_epoch(self, epoch: int) -> None:
        self.view = epoch % len(self.views)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.views[self.view][index], self.labels[index]  # a class index, or a multi-hot target


@torch.no_grad()
def extract(model: AdaptedModel, dataset: Dataset, batch_size: int, device, precision: str, what: str):
    """Pooled features of every readable sample, in dataset order (unreadable ones are left out)."""
    loader = make_loader(dataset, batch_size, ShardSampler(len(dataset), 1, 0), 0, 0, drop_last=False)
    model.eval()
    features, labels, skipped = [], [], []
    for batch in progress_bar(loader, desc=f"features ({what})", unit="batch", leave=False):
        skipped += batch.skipped
        if batch.inputs is None:
            continue
        with autocast(precision, device):
            pooled = model.pooled_features(batch.inputs.to(device))
        features.append(pooled.float().cpu())
        labels.append(batch.labels)
    return torch.cat(features), torch.cat(labels), skipped


def cache_features(
    model: AdaptedModel,
    train_set: Dataset,
    test_set: Dataset,
    batch_size: int,
    info: DistInfo,
    precision: str,
    views: int = 1,
    seed: int = 0,
) -> tuple[CachedFeatures, CachedFeatures, list[Unreadable]]:
    encoded = []
    with torch.random.fork_rng():  # the views' augmentations come from their own seed, not the training stream
        torch.manual_seed(seed + 7919)
        for view in range(views):
            features, labels, skipped = extract(model, train_set, batch_size, info.device, precision, f"train {view}")
            encoded.append(features)
    test_features, test_labels, skipped_test = extract(model, test_set, batch_size, info.device, precision, "test")
    return CachedFeatures(encoded, labels), CachedFeatures([test_features], test_labels), skipped + skipped_test
