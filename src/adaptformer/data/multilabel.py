"""Multi-label image datasets: any number of labels per image, a multi-hot target, scored by mAP.

``--dataset multilabel --data-root DIR``: ``DIR/train.csv`` and ``DIR/test.csv`` beside the images, header
``path,labels``, paths relative to ``DIR``, labels separated by ``|`` (an empty field: an image with none of the
labels)::

    path,labels
    photos/0001.jpg,dog|person
    photos/0002.jpg,

The classes are the lines of ``DIR/classes.txt`` when it exists, else the sorted labels of ``train.csv``; a test
label outside them is refused naming the file and line. Every listed image must exist.

``--dataset nuswide --data-root DIR``: NUS-WIDE's official release (81 concepts): ``ImageList/TrainImagelist.txt``
and ``ImageList/TestImagelist.txt`` (one image path per line, Windows separators as released), the concept list
``Concepts81.txt`` (or ``ConceptsList/Concepts81.txt``) and ``TrainTestLabels/Labels_<concept>_{Train,Test}.txt``
(one 0/1 per line, aligned with the image list); images under ``DIR/Flickr/`` (or ``DIR/images/``, or ``DIR``).
Public mirrors lack many images: the missing ones are skipped and counted in the log.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import AdaptFormerError
from .image import require_listed_images
from .registry import DatasetEntry, Split, register_dataset

log = logging.getLogger("adaptformer.data")
LABEL_SEPARATOR = "|"
NUSWIDE_CONCEPTS = 81


class MultiLabelImageDataset(Dataset):
    """(path, label indices) pairs decoded lazily with PIL; each sample's target is a multi-hot float vector."""

    multilabel = True  # no single label per sample: held-out parts are drawn at random, not stratified

    def __init__(self, samples: list[tuple[str, tuple[int, ...]]], num_classes: int, transform: Callable | None = None):
        self.samples = samples
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, index: int) -> torch.Tensor:
        target = torch.zeros(self.num_classes)
        target[list(self.samples[index][1])] = 1.0
        return target

    def __getitem__(self, index: int):
        with Image.open(self.samples[index][0]) as image:
            image = image.convert("RGB")
        return (self.transform(image) if self.transform else image), self.target(index)


# ---- the generic csv format ------------------------------------------------------------------------------------
def read_label_csv(path: Path) -> list[tuple[str, list[str]]]:
    """``(relative path, label names)`` per row of a ``path,labels`` csv; one line naming the file when wrong."""
    if not path.is_file():
        raise AdaptFormerError(f"--data-root: {path} not found (a multilabel dataset holds train.csv and test.csv)")
    with path.open(newline="", errors="replace") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "labels"} <= set(reader.fieldnames):
            raise AdaptFormerError(
                f"{path}: expected a header 'path,labels', got {','.join(reader.fieldnames or [])!r}"
            )
        rows = []
        for row in reader:
            if not (row["path"] or "").strip():
                raise AdaptFormerError(f"{path}:{reader.line_num}: empty path")
            labels = [label.strip() for label in (row["labels"] or "").split(LABEL_SEPARATOR) if label.strip()]
            rows.append((row["path"].strip(), labels))
    if not rows:
        raise AdaptFormerError(f"{path}: lists no image")
    return rows


def csv_classes(root: Path, train_rows: list[tuple[str, list[str]]]) -> list[str]:
    listed = root / "classes.txt"
    if listed.is_file():
        classes = [line.strip() for line in listed.read_text(errors="replace").splitlines() if line.strip()]
        if len(set(classes)) != len(classes):
            raise AdaptFormerError(f"{listed}: a class is listed twice")
    else:
        classes = sorted({label for _, labels in train_rows for label in labels})
    if not classes:
        raise AdaptFormerError(f"{root / 'train.csv'}: no labels (and no classes.txt)")
    return classes


def _csv_samples(path: Path, root: Path, classes: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for number, (relative, labels) in enumerate(read_label_csv(path), 2):  # line 1 is the header
        unknown = [label for label in labels if label not in index]
        if unknown:
            raise AdaptFormerError(
                f"{path}:{number}: label(s) {', '.join(unknown)} not among the {len(classes)} classes "
                f"({'classes.txt' if (root / 'classes.txt').is_file() else 'those of train.csv'})"
            )
        samples.append((str(root / relative), tuple(sorted({index[label] for label in labels}))))
    require_listed_images(samples, path)
    return samples


def _multilabel_csv(root: Path, train: bool, verify: bool, download: bool) -> Split:
    if download:
        raise AdaptFormerError("--download: a multilabel dataset is a local folder; nothing to download")
    classes = csv_classes(root, read_label_csv(root / "train.csv"))
    path = root / ("train.csv" if train else "test.csv")
    return Split(MultiLabelImageDataset(_csv_samples(path, root, classes), len(classes)), classes)


# ---- NUS-WIDE ---------------------------------------------------------------------------------------------------
def nuswide_concepts(root: Path) -> list[str]:
    for candidate in (root / "Concepts81.txt", root / "ConceptsList" / "Concepts81.txt"):
        if candidate.is_file():
            concepts = [line.strip() for line in candidate.read_text(errors="replace").splitlines() if line.strip()]
            if len(concepts) != NUSWIDE_CONCEPTS:
                raise AdaptFormerError(f"{candidate}: expected {NUSWIDE_CONCEPTS} concepts, found {len(concepts)}")
            return concepts
    raise AdaptFormerError(
        f"--data-root {root}: no Concepts81.txt (or ConceptsList/Concepts81.txt); NUS-WIDE's release holds "
        "ImageList/, TrainTestLabels/ and the concept list"
    )


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise AdaptFormerError(f"--data-root: {path} not found (NUS-WIDE's official list files)")
    return [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]


def nuswide_image_folder(root: Path) -> Path:
    return next((root / name for name in ("Flickr", "images") if (root / name).is_dir()), root)


def _nuswide(root: Path, train: bool, verify: bool, download: bool) -> Split:
    if download:
        raise AdaptFormerError("--download: NUS-WIDE is distributed on request; place its release in --data-root")
    concepts = nuswide_concepts(root)
    which = "Train" if train else "Test"
    images = _read_lines(root / "ImageList" / f"{which}Imagelist.txt")
    labels: list[list[int]] = [[] for _ in images]
    for index, concept in enumerate(concepts):
        path = root / "TrainTestLabels" / f"Labels_{concept}_{which}.txt"
        column = _read_lines(path)
        if len(column) != len(images):
            raise AdaptFormerError(f"{path}: {len(column)} lines, but the image list has {len(images)}")
        for row, value in enumerate(column):
            if value not in ("0", "1"):
                raise AdaptFormerError(f"{path}:{row + 1}: expected 0 or 1, got {value!r}")
            if value == "1":
                labels[row].append(index)
    folder = nuswide_image_folder(root)
    listed = [(str(folder / name.replace("\\", "/")), tuple(row)) for name, row in zip(images, labels, strict=True)]
    samples = [sample for sample in listed if Path(sample[0]).is_file()]
    if not samples:
        raise AdaptFormerError(f"--data-root {root}: none of the {len(listed)} {which.lower()} images is in {folder}")
    if len(samples) < len(listed):
        log.warning(
            "nuswide %s: %d of %d listed images are missing from %s; skipped",
            which.lower(),
            len(listed) - len(samples),
            len(listed),
            folder,
        )
    return Split(MultiLabelImageDataset(samples, len(concepts)), concepts)


register_dataset(
    DatasetEntry(
        "multilabel",
        _multilabel_csv,
        True,
        "image",
        "your multi-label images: train.csv and test.csv (path,labels with '|' between labels) beside them",
        objective="multilabel",
    )
)
register_dataset(
    DatasetEntry(
        "nuswide",
        _nuswide,
        True,
        "image",
        "NUS-WIDE (81 concepts, multi-label): ImageList/, TrainTestLabels/, Concepts81.txt, images in Flickr/",
        objective="multilabel",
    )
)
