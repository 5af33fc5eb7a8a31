"""FGVC in VPT's released layout: the five datasets' folders and image folders, sparse class ids made
contiguous, the final (train + val -> test) and tuning (train -> val) splits, one-line errors."""

import json

import pytest

from adaptformer import AdaptFormerError
from adaptformer.data.fgvc import FGVC_DATASETS
from adaptformer.data.registry import build_split
from adaptformer.train.config import TrainConfig
from formats import FGVC_LAYOUT, write_fgvc
from training_helpers import tiny_train_values


@pytest.mark.parametrize("name", list(FGVC_LAYOUT))
def test_every_dataset_in_its_layout(tmp_path, name):
    root = write_fgvc(tmp_path / "fgvc", name)
    assert (FGVC_DATASETS[name].folder, FGVC_DATASETS[name].images) == FGVC_LAYOUT[name]
    final = build_split(f"fgvc/{name}", root, True)
    assert len(final.dataset) == 9 and final.classes == ["295", "296", "400"]  # sparse ids -> 0, 1, 2
    image, label = final.dataset[2]
    assert image.size == (30, 36) and label == 2
    assert len(build_split(f"fgvc/{name}", root, False).dataset) == 3
    assert len(build_split(f"fgvc/{name}", root, True, benchmark_split="tune").dataset) == 6


def test_errors_name_the_file(tmp_path):
    root = write_fgvc(tmp_path / "fgvc", "cub")
    with pytest.raises(AdaptFormerError, match=r"no Stanford-dogs/ folder \(Stanford Dogs\)"):
        build_split("fgvc/dogs", root, True)
    folder = root / "CUB_200_2011"
    (folder / "images" / "0295.class" / "test_000.jpg").unlink()
    with pytest.raises(AdaptFormerError, match=r"test.json: 1 of 3 listed images are missing"):
        build_split("fgvc/cub", root, False)
    (folder / "val.json").write_text('{"a.jpg": "x"}')
    with pytest.raises(AdaptFormerError, match=r"val.json: 'a.jpg' maps to 'x'; expected an integer class id"):
        build_split("fgvc/cub", root, True)
    (folder / "val.json").write_text("[1, 2")
    with pytest.raises(AdaptFormerError, match=r"val.json: not valid JSON"):
        build_split("fgvc/cub", root, True)
    (folder / "val.json").unlink()
    with pytest.raises(AdaptFormerError, match=r"val.json not found"):
        build_split("fgvc/cub", root, True)
    (folder / "val.json").write_text(json.dumps({f"{k}.jpg": k for k in range(201)}))  # + 3 in train/test
    with pytest.raises(AdaptFormerError, match=r"204 class ids in its split files; CUB-200-2011 has 200"):
        build_split("fgvc/cub", root, True)


def test_fgvc_evaluates_as_vpt_does(tmp_path):
    values = tiny_train_values(tmp_path, dataset="fgvc/cars", data_root=str(tmp_path))
    assert TrainConfig.from_flat(values).crop_pct == 0.875
    assert TrainConfig.from_flat({**values, "crop_pct": 1.0}).crop_pct == 1.0
