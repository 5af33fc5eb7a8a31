"""Image datasets by name, in their real on-disk formats (torchvision), plus two that ship inside packages.

=============  ==================================================  =========================================
name           root holds                                          splits
=============  ==================================================  =========================================
cifar10        ``cifar-10-batches-py/`` (python pickles)            official train / test
cifar100       ``cifar-100-python/``                               official train / test (fine labels)
svhn           ``train_32x32.mat``, ``test_32x32.mat``               official train / test
food101        ``food-101/images``, ``food-101/meta/*.json``       official train / test
imagefolder    ``<class>/<image>`` or ``train/`` + ``val|test/``    given folders, else every 5th file -> test
digits         nothing (scikit-learn's 8x8 digits, 1,797 images)   fixed stratified 80/20 (seed 0)
lfw-faces      nothing (scikit-image's lfw_subset, 200 images)     fixed stratified 75/25 (seed 0)
cifar10-neg    nothing (2,000 CIFAR-10 test images ship inside)    100 / 100 per class, fixed
=============  ==================================================  =========================================

``cifar10-neg`` is a small shifted-domain task for the embedded backbone (pretrained on CIFAR-10's training
split): 200 images per class from CIFAR-10's *test* split, shown as greyscale negatives (255 - luminance), with
CIFAR-10's ten classes. The backbone knows the classes but not this look, so it needs adapting; it builds with
no download (``tools/make_cifar10_sample.py`` made the file).

torchvision MD5-checks CIFAR and SVHN files even without downloading; ``verify=False`` skips that check (for
files re-packed in the same format). ``download=True`` fetches the official archives (needs a network).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from ..errors import AdaptFormerError
from ..utils.extras import require
from .registry import DatasetEntry, Split, register_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def _unverified(cls):
    """A torchvision dataset class whose files are only checked for existence, not MD5."""
    attrs = {}
    for name in ("train_list", "test_list"):
        if hasattr(cls, name):
            attrs[name] = [[f, None] for f, _ in getattr(cls, name)]
    if hasattr(cls, "meta") and isinstance(cls.meta, dict):
        attrs["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):
        attrs["split_list"] = {k: [v[0], v[1], None] for k, v in cls.split_list.items()}
    return type(f"Unverified{cls.__name__}", (cls,), attrs)


def _torchvision(cls, root: Path, verify: bool, download: bool, what: str, **kwargs):
    klass = cls if verify or download else _unverified(cls)
    try:
        return klass(str(root), download=download, **kwargs)
    except RuntimeError as error:
        hint = "" if not verify else " (re-packed files? pass --no-verify to skip the MD5 check)"
        raise AdaptFormerError(f"--data-root {root}: {what} not found or corrupted: {error}{hint}") from None
    except (OSError, ValueError, KeyError) as error:
        raise AdaptFormerError(f"--data-root {root}: cannot read {what} ({error})") from None


def _cifar(cls, what):
    def build(root: Path, train: bool, verify: bool, download: bool) -> Split:
        ds = _torchvision(cls, root, verify, download, what, train=train)
        return Split(ds, list(ds.classes))

    return build


def _svhn(root: Path, train: bool, verify: bool, download: bool) -> Split:
    ds = _torchvision(
        tvd.SVHN, root, verify, download, "SVHN train_32x32.mat/test_32x32.mat", split="train" if train else "test"
    )
    return Split(ds, [str(i) for i in range(10)])


def _food101(root: Path, train: bool, verify: bool, download: bool) -> Split:
    ds = _torchvision(
        tvd.Food101,
        root,
        verify,
        download,
        "Food-101 (food-101/images, food-101/meta)",
        split="train" if train else "test",
    )
    return Split(ds, list(ds.classes))


class FileImageDataset(Dataset):
    """(path, label) pairs decoded lazily with PIL; exposes ``samples`` like ImageFolder."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable | None = None):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        with Image.open(path) as image:
            image = image.convert("RGB")
        return (self.transform(image) if self.transform else image), label


def require_listed_images(samples: list[tuple[str, int]], source: Path, shown: int = 3) -> None:
    """Every image a list file names exists, or one line: how many are missing, and the first few."""
    missing = [path for path, _ in samples if not Path(path).is_file()]
    if missing:
        names = ", ".join(missing[:shown])
        raise AdaptFormerError(f"{source}: {len(missing)} of {len(samples)} listed images are missing ({names}...)")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(root: Path, option: str = "--data-root") -> list[str]:
    """Sorted class sub-folder names of an ImageFolder root (labels are their indices)."""
    if not root.is_dir():
        raise AdaptFormerError(f"{option} {root}: is not a directory (expected <root>/<class>/<image>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise AdaptFormerError(f"{option} {root}: no class sub-folders (expected <root>/<class>/<image>)")
    return classes


def _imagefolder(root: Path, train: bool, verify: bool, download: bool) -> Split:
    if download:
        raise AdaptFormerError("--download: imagefolder datasets are local folders; nothing to download")
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        folder = root / "train" if train else test_dir
        classes = class_folders(root / "train")
        samples = [(str(p), i) for i, c in enumerate(classes) for p in list_images(folder / c)]
    else:
        classes = class_folders(root)
        samples = []
        for i, c in enumerate(classes):
            files = list_images(root / c)
            # deterministic split: every 5th file (by sorted name) is a test image
            samples += [(str(p), i) for k, p in enumerate(files) if (k % 5 == 4) != train]
    if not samples:
        raise AdaptFormerError(f"--data-root {root}: no images with suffixes {', '.join(IMAGE_SUFFIXES)}")
    return Split(FileImageDataset(samples), classes)


class ArrayImageDataset(Dataset):
    """uint8 HxWx3 images held in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), int(self.labels[index])


def _fixed_split(images: np.ndarray, labels: np.ndarray, train: bool, test_size: float) -> tuple:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(index, test_size=test_size, random_state=0, stratify=labels)
    chosen = np.sort(train_idx if train else test_idx)
    return images[chosen], labels[chosen]


def _digits(root: Path | None, train: bool, verify: bool, download: bool) -> Split:
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    images, labels = _fixed_split(rgb, digits.target, train, 0.2)
    return Split(ArrayImageDataset(images, labels), [str(i) for i in range(10)])


def _lfw_faces(root: Path | None, train: bool, verify: bool, download: bool) -> Split:
    lfw_subset = require("skimage.data", "--dataset lfw-faces").lfw_subset

    faces = lfw_subset()  # (200, 25, 25) floats in [0, 1]: 100 faces then 100 non-faces
    gray = np.clip(faces * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    labels = np.array([0] * 100 + [1] * 100)
    images, labels = _fixed_split(rgb, labels, train, 0.25)
    return Split(ArrayImageDataset(images, labels), ["face", "non-face"])


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_SAMPLE = Path(__file__).resolve().parent / "samples" / "cifar10_sample.npz"


def _cifar10_negative(root: Path | None, train: bool, verify: bool, download: bool) -> Split:
    import io

    with np.load(CIFAR10_SAMPLE, allow_pickle=False) as sample:
        jpeg, offsets, labels, in_train = sample["jpeg"], sample["offsets"], sample["labels"], sample["train"]
    chosen = np.flatnonzero(in_train == train)
    images = np.empty((len(chosen), 32, 32, 3), dtype=np.uint8)
    for row, index in enumerate(chosen):
        grey = Image.open(io.BytesIO(jpeg[offsets[index] : offsets[index + 1]].tobytes())).convert("L")
        images[row] = (255 - np.asarray(grey, dtype=np.uint8))[..., None]
    return Split(ArrayImageDataset(images, labels[chosen]), list(CIFAR10_CLASSES))


for _name, _build, _needs_root, _description in (
    ("cifar10", _cifar(tvd.CIFAR10, "CIFAR-10 (cifar-10-batches-py)"), True, "CIFAR-10 python pickles"),
    ("cifar100", _cifar(tvd.CIFAR100, "CIFAR-100 (cifar-100-python)"), True, "CIFAR-100 python pickles"),
    ("svhn", _svhn, True, "SVHN train_32x32.mat / test_32x32.mat"),
    ("food101", _food101, True, "Food-101 images + meta/{train,test}.json"),
    ("imagefolder", _imagefolder, True, "<class>/<image> or train/ + val|test/"),
    ("digits", _digits, False, "scikit-learn's 8x8 digits (offline)"),
    ("lfw-faces", _lfw_faces, False, "scikit-image's lfw_subset, faces vs non-faces (offline)"),
    ("cifar10-neg", _cifar10_negative, False, "CIFAR-10 test images as greyscale negatives (offline, ships)"),
):
    register_dataset(DatasetEntry(_name, _build, _needs_root, "image", _description))
