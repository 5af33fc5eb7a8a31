"""VTAB-1k in the layout the parameter-efficient transfer papers distribute (one folder per task).

``--dataset vtab/<task> --data-root <folder holding the task folders>``; each task folder holds its images and four
list files, one line per image, ``<path relative to the task folder> <integer label>``:

====================  ==============================  ======================
list file             what                            used for
====================  ==============================  ======================
``train800val200.txt``  the 1,000 training images       training, final numbers
``test.txt``            the test split                  evaluation, final numbers
``train800.txt``        800 of the training images      training, tuning
``val200.txt``          the other 200                   evaluation, tuning
====================  ==============================  ======================

``--benchmark-split final`` (default) trains on train800val200 and evaluates on test; ``tune`` trains on
train800 and evaluates on val200, for hyper-parameter search. The protocol's preprocessing is the dataset's recipe
(applied unless an option is given): the image resized to the input size without a crop (``resize_mode: squash``),
bicubic, and no augmentation, as the reference loaders do.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AdaptFormerError
from .image import FileImageDataset, require_listed_images
from .registry import DatasetEntry, Split, check_benchmark_split, register_dataset

#: task -> class count, by group, in the order the papers' tables use
VTAB_GROUPS: dict[str, dict[str, int]] = {
    "natural": {
        "cifar": 100,
        "caltech101": 102,
        "dtd": 47,
        "oxford_flowers102": 102,
        "oxford_iiit_pet": 37,
        "svhn": 10,
        "sun397": 397,
    },
    "specialized": {"patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5},
    "structured": {
        "clevr_count": 8,
        "clevr_dist": 6,
        "dmlab": 6,
        "kitti": 4,
        "dsprites_loc": 16,
        "dsprites_ori": 16,
        "smallnorb_azi": 18,
        "smallnorb_ele": 9,
    },
}
VTAB_TASKS: dict[str, int] = {task: count for group in VTAB_GROUPS.values() for task, count in group.items()}
VTAB_GROUP_OF: dict[str, str] = {task: group for group, tasks in VTAB_GROUPS.items() for task in tasks}
#: --benchmark-split -> (training list, evaluation list)
VTAB_LISTS = {"final": ("train800val200.txt", "test.txt"), "tune": ("train800.txt", "val200.txt")}
#: the reference preprocessing: squash-resize to the input size, bicubic, no augmentation
VTAB_RECIPE = {"augment": False, "resize_mode": "squash", "crop_pct": 1.0, "interpolation": "bicubic"}


def read_image_list(path: Path, folder: Path, classes: int) -> list[tuple[str, int]]:
    """``(image path, label)`` per line of a list file; one line naming the file (and line) when it is wrong."""
    if not path.is_file():
        raise AdaptFormerError(f"--data-root: {path} not found (VTAB-1k task folders hold {', '.join(_all_lists())})")
    samples = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)  # a path may hold spaces; the label is the last field
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise AdaptFormerError(f"{path}:{number}: expected '<relative image path> <integer label>', got {line!r}")
        label = int(parts[1])
        if not 0 <= label < classes:
            raise AdaptFormerError(f"{path}:{number}: label {label} outside 0-{classes - 1} ({classes} classes)")
        samples.append((str(folder / parts[0]), label))
    if not samples:
        raise AdaptFormerError(f"{path}: lists no image")
    require_listed_images(samples, path)
    return samples


def _all_lists() -> list[str]:
    return sorted({name for pair in VTAB_LISTS.values() for name in pair})


def _builder(task: str):
    classes = VTAB_TASKS[task]

    def build(root: Path, train: bool, verify: bool, download: bool, benchmark_split: str = "final") -> Split:
        check_benchmark_split(benchmark_split)
        folder = Path(root) / task
        if not folder.is_dir():
            raise AdaptFormerError(f"--data-root {root}: no {task}/ folder (VTAB-1k: one folder per task)")
        list_file = VTAB_LISTS[benchmark_split][0 if train else 1]
        samples = read_image_list(folder / list_file, folder, classes)
        return Split(FileImageDataset(samples), [str(k) for k in range(classes)])

    return build


for _task in VTAB_TASKS:
    register_dataset(
        DatasetEntry(
            f"vtab/{_task}",
            _builder(_task),
            True,
            "image",
            f"VTAB-1k {_task} ({VTAB_GROUP_OF[_task]}, {VTAB_TASKS[_task]} classes): list files in <root>/{_task}/",
            options=("benchmark_split",),
            recipe=VTAB_RECIPE,
        )
    )
