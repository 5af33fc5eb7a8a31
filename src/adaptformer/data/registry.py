"""Datasets by name. A modality module (``data/image.py``; video to come) registers its builders here.

A builder is ``build(root, train, verify, download) -> Split`` where ``Split.dataset[i]`` is ``(input, label)``
with ``input`` a PIL image or a decoded clip that the split's ``transform`` turns into a tensor.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..errors import AdaptFormerError

#: ``--benchmark-split`` of the benchmarks' datasets (VTAB-1k, FGVC): final numbers, or the tuning split
BENCHMARK_SPLITS = ("final", "tune")

#: modules that register datasets when imported
BUILTIN_MODULES = (
    "adaptformer.data.image",
    "adaptformer.data.video",
    "adaptformer.data.vtab",
    "adaptformer.data.fgvc",
    "adaptformer.data.multilabel",
)


@dataclass
class Split:
    dataset: Dataset
    classes: list[str]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    build: Callable[..., Split]  # (root, train, verify, download, **dataset options) -> Split
    needs_root: bool
    modality: str  # "image" or "video"
    description: str = ""
    hflip: bool = True  # False where a mirror image changes the label (Something-Something's left/right)
    options: tuple[str, ...] = ()  # training options the builder takes as keywords (image datasets)
    recipe: dict = field(default_factory=dict)  # the protocol's training options, applied unless given
    objective: str = "classification"  # or "multilabel": samples' targets are multi-hot vectors (objectives.py)


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    DATASETS[entry.name] = entry
    return entry


def dataset_names() -> list[str]:
    _load_builtin()
    return list(DATASETS)


def get_dataset(name: str) -> DatasetEntry:
    _load_builtin()
    if name not in DATASETS:
        raise AdaptFormerError(f"--dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
    return DATASETS[name]


def build_split(
    name: str,
    root: str | Path | None,
    train: bool,
    transform: Callable | None = None,
    verify: bool = True,
    download: bool = False,
    **options,
) -> Split:
    """The train or test split of a named dataset, with ``transform`` applied to each sample's input.
    ``options`` are the dataset's own (video: ``num_frames``, ``sampling_rate``, ``test_clips``, ``split``, ...);
    image datasets take none."""
    entry = get_dataset(name)
    if entry.needs_root:
        if root is None:
            raise AdaptFormerError(f"--data-root is required for dataset {name}")
        root = Path(root)
        if not root.exists() and not download:
            raise AdaptFormerError(f"--data-root {root}: no such directory")
    split = (
        entry.build(root, train, verify, download, **options) if options else entry.build(root, train, verify, download)
    )
    split.dataset.transform = transform
    return split


def labels_of(dataset: Dataset) -> list[int]:
    """Every sample's label, read from the dataset's label list where it keeps one (torchvision's ``targets`` /
    ``labels`` / ``_labels``, ``samples`` of (path, label)); otherwise by loading each sample. A multi-label
    dataset's samples have no single label to stratify by: they form one group, so held-out parts are random."""
    if getattr(dataset, "multilabel", False):
        return [0] * len(dataset)
    for name in ("targets", "labels", "_labels"):
        labels = getattr(dataset, name, None)
        if labels is not None and len(labels) == len(dataset):
            return [int(label) for label in labels]
    samples = getattr(dataset, "samples", None)
    if samples is not None and len(samples) == len(dataset):
        return [int(label) for _, label in samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def carve_validation(labels: list[int], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(kept, held-out) indices: ``fraction`` of the samples, stratified by label where every class has at
    least two samples, the same for every run (a fixed seed, independent of the training seed)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels) if labels else np.zeros(0, dtype=int)
    held_count = max(1, round(fraction * len(labels)))
    if len(labels) < 2 or held_count >= len(labels):
        raise AdaptFormerError(
            f"--validation-split {fraction}: the training set has {len(labels)} samples, too few to hold out "
            f"{held_count}"
        )
    classes = int((counts > 0).sum())
    can_stratify = counts[counts > 0].min() >= 2 and classes <= held_count <= len(labels) - classes
    stratify = labels if can_stratify else None
    kept, held = train_test_split(np.arange(len(labels)), test_size=held_count, random_state=seed, stratify=stratify)
    return sorted(kept.tolist()), sorted(held.tolist())


def fold_split(labels: list[int], fold: int, folds: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(kept, held-out) indices: fold ``fold`` of ``folds`` held out, stratified by label where every class has
    at least ``folds`` samples, the same for every run (a fixed seed, independent of the training seed)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if len(labels) < folds:
        raise AdaptFormerError(f"--validation-fold: {folds} folds of a training set of {len(labels)} samples")
    counts = np.bincount(labels)
    stratified = counts[counts > 0].min() >= folds
    splitter = (StratifiedKFold if stratified else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    kept, held = list(splitter.split(np.zeros(len(labels)), labels))[fold]
    return sorted(kept.tolist()), sorted(held.tolist())


def check_benchmark_split(value: str) -> None:
    if value not in BENCHMARK_SPLITS:
        raise AdaptFormerError(f"--benchmark-split: expected one of {', '.join(BENCHMARK_SPLITS)}, got {value!r}")


def _load_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
