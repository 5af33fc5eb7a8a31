"""Each named dataset reads its real on-disk format; bad input fails in one line."""

import io

import numpy as np
import pytest
import torch

from adaptformer import AdaptFormerError
from adaptformer.data.registry import build_split
from formats import write_cifar10, write_cifar100, write_food101, write_imagefolder, write_svhn


def test_cifar10_pickles(tmp_path):
    write_cifar10(tmp_path, per_batch=4)
    train = build_split("cifar10", tmp_path, True, verify=False)
    test = build_split("cifar10", tmp_path, False, verify=False)
    assert len(train.dataset) == 20 and len(test.dataset) == 4
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    image, label = train.dataset[1]
    assert image.size == (32, 32) and label == 1


def test_cifar_md5_check_fails_clearly_on_repacked_files(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(AdaptFormerError, match="--no-verify"):
        build_split("cifar10", tmp_path, True)


def test_cifar100_uses_fine_labels(tmp_path):
    write_cifar100(tmp_path, train=20, test=10)
    split = build_split("cifar100", tmp_path, True, verify=False)
    assert len(split.classes) == 100 and len(split.dataset) == 20
    assert [split.dataset[k][1] for k in (0, 7, 19)] == [0, 7, 19]


def test_svhn_mat_maps_label_10_to_digit_0(tmp_path):
    write_svhn(tmp_path, train=12, test=6)
    split = build_split("svhn", tmp_path, True, verify=False)
    labels = [split.dataset[k][1] for k in range(12)]
    assert labels[9] == 0 and labels[0] == 1 and len(split.classes) == 10
    assert split.dataset[0][0].size == (32, 32)


def test_food101_reads_meta_json(tmp_path):
    write_food101(tmp_path, per_class=4)
    train = build_split("food101", tmp_path, True)
    test = build_split("food101", tmp_path, False)
    assert train.classes == ["apple_pie", "baby_back_ribs", "churros"]
    assert len(train.dataset) == 9 and len(test.dataset) == 3


def test_imagefolder_fixed_split_and_given_folders(tmp_path):
    write_imagefolder(tmp_path / "flat", per_class=10)
    train = build_split("imagefolder", tmp_path / "flat", True)
    test = build_split("imagefolder", tmp_path / "flat", False)
    assert (len(train.dataset), len(test.dataset)) == (16, 4)
    assert not {p for p, _ in train.dataset.samples} & {p for p, _ in test.dataset.samples}
    write_imagefolder(tmp_path / "split", per_class=3, split_folders=True)
    assert len(build_split("imagefolder", tmp_path / "split", False).dataset) == 6


@pytest.mark.parametrize(
    "name, sizes, classes",
    [("digits", (1437, 360), 10), ("lfw-faces", (150, 50), 2), ("cifar10-neg", (1000, 1000), 10)],
)
def test_packaged_datasets_have_fixed_disjoint_splits(name, sizes, classes):
    train = build_split(name, None, True)
    test = build_split(name, None, False)
    assert (len(train.dataset), len(test.dataset)) == sizes and len(train.classes) == classes
    again = build_split(name, None, False)
    assert np.array_equal(again.dataset.images, test.dataset.images)
    train_rows = {img.tobytes() for img in train.dataset.images}
    assert sum(img.tobytes() in train_rows for img in test.dataset.images) < len(test.dataset) // 10
    assert sorted(set(test.dataset.labels.tolist())) == list(range(classes))


def test_cifar10_negative_is_greyscale_negatives_of_held_out_cifar10_test_images():
    from PIL import Image

    from adaptformer.data.image import CIFAR10_SAMPLE

    test = build_split("cifar10-neg", None, False)
    assert test.classes[3] == "cat" and np.bincount(test.dataset.labels).tolist() == [100] * 10
    images = test.dataset.images
    assert images.shape[1:] == (32, 32, 3) and (images[..., 0] == images[..., 2]).all()
    with np.load(CIFAR10_SAMPLE) as sample:  # the first test image is the 101st image of class 0, inverted
        start, end = sample["offsets"][100], sample["offsets"][101]
        original = Image.open(io.BytesIO(sample["jpeg"][start:end].tobytes())).convert("L")
    assert np.array_equal(images[0, ..., 0], 255 - np.asarray(original))


def test_transform_is_applied(tmp_path):
    from adaptformer.data.transforms import InputSpec, eval_transform

    spec = InputSpec(size=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)
    split = build_split("digits", None, False, eval_transform(spec))
    image, _ = split.dataset[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 24, 24)


@pytest.mark.parametrize(
    "name, root, message",
    [
        ("imagenet", None, "--dataset: expected one of"),
        ("cifar100", None, "--data-root is required"),
        ("cifar100", "/nonexistent/dir", "no such directory"),
        ("imagefolder", "EMPTY", "no class sub-folders"),
    ],
)
def test_bad_dataset_arguments(tmp_path, name, root, message):
    if root == "EMPTY":
        root = tmp_path
    with pytest.raises(AdaptFormerError, match=message):
        build_split(name, root, True)


def test_missing_files_in_existing_root(tmp_path):
    with pytest.raises(AdaptFormerError, match="CIFAR-100"):
        build_split("cifar100", tmp_path, True, verify=False)
    with pytest.raises(AdaptFormerError, match="SVHN"):
        build_split("svhn", tmp_path, True, verify=False)
    with pytest.raises(AdaptFormerError, match="Food-101"):
        build_split("food101", tmp_path, True)


def test_a_module_can_register_a_dataset(tmp_path):
    from torch.utils.data import TensorDataset

    from adaptformer.data.registry import DATASETS, DatasetEntry, Split, dataset_names, register_dataset

    def build(root, train, verify, download):
        return Split(TensorDataset(torch.zeros(3, 1), torch.zeros(3)), ["only"])

    register_dataset(DatasetEntry("toy-video", build, needs_root=False, modality="video"))
    try:
        assert "toy-video" in dataset_names()
        split = build_split("toy-video", None, True, transform="marker")
        assert split.classes == ["only"] and split.dataset.transform == "marker"
    finally:
        DATASETS.pop("toy-video")
