"""DataLoaders shared by single-process and distributed training.

* Every run shards with a :class:`ResumableSampler` (a DistributedSampler, also for one process), so a batch of
  ``b`` on each of ``n`` ranks covers exactly the images one process sees with a batch of ``n*b``, and a run
  resumed mid-epoch continues with the very same order.
* Unreadable files do not stop training: :class:`SkipUnreadable` turns a decode error into a marker that the
  collate function drops and reports, so the loop can count and log them.
* A :class:`Batch` is modality-neutral: ``inputs`` (images (B,C,H,W), clips (B,C,T,H,W), or either with a views
  dimension after B for test-time views), ``labels``, and ``ids``, the dataset index of each sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data import default_collate as torch_default_collate

from ..errors import AdaptFormerError


@dataclass
class Unreadable:
    index: int
    path: str
    reason: str


class SkipUnreadable(Dataset):
    """Wrap a dataset so an image that fails to decode yields :class:`Unreadable` instead of raising."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            inputs, label = self.dataset[index]
            return index, inputs, label
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]}"
            return Unreadable(index, source_of(self.dataset, index), reason)


def source_of(dataset: Dataset, index: int) -> str:
    """The file behind sample ``index`` (through Subsets), or ``item N`` for datasets without files."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    samples = getattr(dataset, "samples", None) or getattr(dataset, "_image_files", None)
    if not samples:
        return f"item {index}"
    sample = samples[index]
    return str(sample[0] if isinstance(sample, tuple) else sample)


def check_some_readable(dataset: Dataset, what: str, probes: int = 8) -> None:
    """Fail fast when none of up to ``probes`` samples spread over the dataset can be read (a wrong folder, a
    broken copy), rather than after an epoch of skipped files; a few unreadable ones are skipped in training."""
    if len(dataset) == 0:
        raise AdaptFormerError(f"{what}: no samples")
    wrapped = SkipUnreadable(dataset)
    step = max(1, len(dataset) // probes)
    tried = [wrapped[i] for i in range(0, len(dataset), step)[:probes]]
    failures = [item for item in tried if isinstance(item, Unreadable)]
    if len(failures) == len(tried):
        first = failures[0]
        raise AdaptFormerError(
            f"{what}: none of the {len(tried)} files tried could be read (first: {first.path}: {first.reason})"
        )


@dataclass
class Batch:
    inputs: torch.Tensor | None
    labels: torch.Tensor | None
    ids: torch.Tensor | None
    skipped: list[Unreadable]

    def __len__(self) -> int:
        return 0 if self.labels is None else len(self.labels)


def collate_skipping_unreadable(items: list) -> Batch:
    good = [item for item in items if not isinstance(item, Unreadable)]
    skipped = [item for item in items if isinstance(item, Unreadable)]
    if not good:
        return Batch(None, None, None, skipped)
    ids, inputs, labels = torch_default_collate(good)
    return Batch(inputs, labels, ids, skipped)


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose epoch order can be entered part-way (``skip`` samples of this rank)."""

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int, drop_last: bool = False
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation shard without padding: rank r sees items r, r+n, r+2n... so every item counts once."""

    def __init__(self, length: int, num_replicas: int, rank: int):
        self.indices = list(range(rank, length, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset: Dataset, batch_size: int, sampler, workers: int, seed: int, drop_last: bool) -> DataLoader:
    return DataLoader(
        SkipUnreadable(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping_unreadable,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
