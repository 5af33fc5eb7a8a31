"""Datasets by name. A modality module (``data/image.py``; video to come) registers its builders here.

A builder is ``build(root, train, verify, download) -> Split`` where ``Split.dataset[i]`` is ``(input, label)``
with ``input`` a PIL image or a decoded clip that the split's ``transform`` turns into a tensor.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import AdaptFormerError

#: modules that register datasets when imported
BUILTIN_MODULES = ("adaptformer.data.image", "adaptformer.data.video")


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


def _load_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
