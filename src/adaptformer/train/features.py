"""Linear probing on features computed once: the frozen backbone runs over each image a single time.

A linear probe changes nothing before the head, so with un-augmented inputs every epoch would recompute the
same pooled features. ``cache_features`` computes them once (train and test splits, in dataset order) and
:class:`FeatureHead` trains the task's head on them: the same optimizer steps in the same order, a fraction of
the time. The task files written are the usual ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data.loading import ShardSampler, Unreadable, make_loader
from ..model import AdaptedModel
from ..runtime.distributed import DistInfo
from ..runtime.precision import autocast


class FeatureHead(nn.Module):
    """The active task's head over cached pooled features (fc_norm, BatchNorm, Linear)."""

    def __init__(self, model: AdaptedModel):
        super().__init__()
        self.model = model

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.task.forward_head(pooled)


class TensorPairs(Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.features[index], int(self.labels[index])


@torch.no_grad()
def extract(model: AdaptedModel, dataset: Dataset, batch_size: int, device, precision: str, what: str):
    """Pooled features of every readable sample, in dataset order (unreadable ones are left out)."""
    loader = make_loader(dataset, batch_size, ShardSampler(len(dataset), 1, 0), 0, 0, drop_last=False)
    model.eval()
    features, labels, skipped = [], [], []
    for batch in tqdm(loader, desc=f"features ({what})", unit="batch", leave=False):
        skipped += batch.skipped
        if batch.inputs is None:
            continue
        with autocast(precision, device):
            pooled = model.pooled_features(batch.inputs.to(device))
        features.append(pooled.float().cpu())
        labels.append(batch.labels)
    return TensorPairs(torch.cat(features), torch.cat(labels)), skipped


def cache_features(
    model: AdaptedModel, train_set: Dataset, test_set: Dataset, batch_size: int, info: DistInfo, precision: str
) -> tuple[Dataset, Dataset, list[Unreadable]]:
    train, skipped_train = extract(model, train_set, batch_size, info.device, precision, "train")
    test, skipped_test = extract(model, test_set, batch_size, info.device, precision, "test")
    return train, test, skipped_train + skipped_test
