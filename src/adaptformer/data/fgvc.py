"""FGVC, the five fine-grained datasets of the VPT benchmark, in the layout VPT released their splits for.

``--dataset fgvc/<name> --data-root <folder holding the dataset folders>``; each dataset folder holds its images
and ``train.json``, ``val.json``, ``test.json``, each mapping an image path (relative to the dataset's image
folder) to an integer class id:

==============  ==================  ==============  =======
name            folder              image folder    classes
==============  ==================  ==============  =======
``cub``         ``CUB_200_2011/``    ``images/``      200
``nabirds``     ``nabirds/``         ``images/``      555
``flowers``     ``OxfordFlower/``    the folder       102
``dogs``        ``Stanford-dogs/``   ``Images/``      120
``cars``        ``Stanford-cars/``   the folder       196
==============  ==================  ==============  =======

Class ids need not be contiguous (NABirds' are not): as VPT's loader does, the sorted distinct ids become
classes 0..N-1 (their names are the ids). ``--benchmark-split final`` (default) trains on train + val and
evaluates on test; ``tune`` trains on train and evaluates on val. Preprocessing: the usual recipe,
evaluation Resize(256) + CenterCrop(224) (``crop_pct`` 0.875), as VPT evaluates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdaptFormerError
from ..utils.options import is_int
from .image import FileImageDataset, require_listed_images
from .registry import DatasetEntry, Split, check_benchmark_split, register_dataset


@dataclass(frozen=True)
class FGVCDataset:
    folder: str
    images: str  # the image folder, relative to the dataset folder ("" for the folder itself)
    classes: int
    title: str


FGVC_DATASETS = {
    "cub": FGVCDataset("CUB_200_2011", "images", 200, "CUB-200-2011"),
    "nabirds": FGVCDataset("nabirds", "images", 555, "NABirds"),
    "flowers": FGVCDataset("OxfordFlower", "", 102, "Oxford Flowers"),
    "dogs": FGVCDataset("Stanford-dogs", "Images", 120, "Stanford Dogs"),
    "cars": FGVCDataset("Stanford-cars", "", 196, "Stanford Cars"),
}
#: --benchmark-split -> (training json files, evaluation json file)
FGVC_SPLITS = {"final": (("train.json", "val.json"), "test.json"), "tune": (("train.json",), "val.json")}
FGVC_RECIPE = {"crop_pct": 0.875}


def read_split_json(path: Path) -> dict[str, int]:
    """``{image path: class id}`` from one split file; one line naming the file when it is not that."""
    if not path.is_file():
        raise AdaptFormerError(f"--data-root: {path} not found (FGVC folders hold train.json, val.json, test.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdaptFormerError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not data:
        raise AdaptFormerError(f"{path}: expected a JSON object of image path -> class id")
    wrong = [k for k, v in data.items() if not is_int(v)]
    if wrong:
        raise AdaptFormerError(f"{path}: {wrong[0]!r} maps to {data[wrong[0]]!r}; expected an integer class id")
    return data


def _builder(name: str):
    spec = FGVC_DATASETS[name]

    def build(root: Path, train: bool, verify: bool, download: bool, benchmark_split: str = "final") -> Split:
        check_benchmark_split(benchmark_split)
        folder = Path(root) / spec.folder
        if not folder.is_dir():
            raise AdaptFormerError(f"--data-root {root}: no {spec.folder}/ folder ({spec.title})")
        splits = {file: read_split_json(folder / file) for file in ("train.json", "val.json", "test.json")}
        ids = sorted({label for split in splits.values() for label in split.values()})
        if len(ids) > spec.classes:
            raise AdaptFormerError(
                f"{folder}: {len(ids)} class ids in its split files; {spec.title} has {spec.classes}"
            )
        class_of = {label: k for k, label in enumerate(ids)}
        train_files, eval_file = FGVC_SPLITS[benchmark_split]
        images = folder / spec.images
        samples = []
        for file in train_files if train else (eval_file,):
            listed = [(str(images / path), class_of[label]) for path, label in splits[file].items()]
            require_listed_images(listed, folder / file)
            samples += listed
        return Split(FileImageDataset(samples), [str(label) for label in ids])

    return build


for _name, _spec in FGVC_DATASETS.items():
    register_dataset(
        DatasetEntry(
            f"fgvc/{_name}",
            _builder(_name),
            True,
            "image",
            f"FGVC {_spec.title} ({_spec.classes} classes): {_spec.folder}/ with train/val/test.json",
            options=("benchmark_split",),
            recipe=FGVC_RECIPE,
        )
    )
