"""What a run trains and evaluates on: the input spec, the transforms, the splits (held-out parts of train for
validation and k-fold) and the name of the split its figures are on."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backbones.families import input_spec_of
from ..data.registry import build_split, carve_validation, fold_split, get_dataset, labels_of
from ..data.transforms import InputSpec, eval_transform, train_transform
from ..data.video import VideoTransform
from ..errors import AdaptFormerError
from .config import TrainConfig, parse_fold


def input_spec(cfg: TrainConfig, backbone: nn.Module, video: bool = False) -> InputSpec:
    """The backbone's preprocessing with the run's overrides: what the task files record."""
    # the small-image recipe trains on whole resized images: evaluation resizes them the same way (unless told)
    resize_mode = cfg.resize_mode or ("squash" if cfg.train_crop == "pad" else None)
    spec = input_spec_of(backbone).replace(
        crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, resize_mode=resize_mode
    )
    # images on a video backbone stay images: the model shows each as a static clip (AdaptedModel.backbone_input)
    return spec.replace(sampling_rate=cfg.sampling_rate) if video else spec.replace(frames=1)


def transforms_for(cfg: TrainConfig, spec: InputSpec):
    """(train, test) transforms: the image recipe, or clip transforms for video datasets."""
    entry = get_dataset(cfg.dataset)
    hflip = cfg.hflip if entry.hflip else 0.0  # e.g. SSv2: "left to right" must not become "right to left"
    if entry.modality == "video":
        train = VideoTransform(spec, True, hflip) if cfg.augment else VideoTransform(spec, False)
        return train, VideoTransform(spec, False, crops=cfg.test_crops)
    return train_transform(spec, hflip, cfg.scale_min, cfg.augment, cfg.train_crop), eval_transform(spec)


def dataset_options(cfg: TrainConfig, frames: int | None = None) -> dict[str, Any]:
    """The keywords the run's dataset builder takes: a benchmark's split, or a video dataset's sampling."""
    entry = get_dataset(cfg.dataset)
    options = {name: getattr(cfg, name) for name in entry.options}
    if entry.modality == "video":  # sample the frames the backbone takes
        options = {**cfg.video_options(), "num_frames": frames or cfg.num_frames}
    return dict(verify=cfg.verify, download=cfg.download, **options)


def training_labels(cfg: TrainConfig) -> list[int]:
    """The label of every training sample the run would use (``--max-train-samples`` applied), read from the
    dataset's label lists without decoding: what ``tune`` sizes its trials by."""
    labels = labels_of(build_split(cfg.dataset, cfg.data_root, True, None, **dataset_options(cfg)).dataset)
    return labels[: cfg.max_train_samples] if cfg.max_train_samples else labels


def build_data(cfg: TrainConfig, spec: InputSpec):
    train_tf, test_tf = transforms_for(cfg, spec)
    common = dataset_options(cfg, spec.frames)
    train = build_split(cfg.dataset, cfg.data_root, True, train_tf, **common)
    test = build_split(cfg.dataset, cfg.data_root, False, test_tf, **common)
    if train.classes != test.classes:
        raise AdaptFormerError(f"--data-root {cfg.data_root}: train and test splits have different classes")
    train_set, test_set = train.dataset, test.dataset
    if cfg.max_train_samples:
        train_set = torch.utils.data.Subset(train_set, range(min(cfg.max_train_samples, len(train_set))))
    if cfg.validation_split or cfg.validation_fold:  # evaluate on held-out training samples, seen as test ones are
        held_out = build_split(cfg.dataset, cfg.data_root, True, test_tf, **common).dataset
        labels = labels_of(train.dataset)[: len(train_set)]
        if cfg.validation_fold:
            kept, held = fold_split(labels, *parse_fold(cfg.validation_fold))
        else:
            kept, held = carve_validation(labels, cfg.validation_split)
        train_set, test_set = torch.utils.data.Subset(train_set, kept), torch.utils.data.Subset(held_out, held)
    if cfg.max_eval_samples:
        test_set = torch.utils.data.Subset(test_set, range(min(cfg.max_eval_samples, len(test_set))))
    return train_set, test_set, train.classes


def evaluated_on(cfg: TrainConfig) -> str:
    """Which split the run's figures are on (summary.json): a held-out part of train, a benchmark's tuning
    split, or the test split."""
    if cfg.validation_split:
        return f"validation ({cfg.validation_split:g} of train)"
    if cfg.validation_fold:
        fold, folds = parse_fold(cfg.validation_fold)
        return f"validation (fold {fold} of {folds} of train)"
    if "benchmark_split" in get_dataset(cfg.dataset).options and cfg.benchmark_split == "tune":
        return "validation (the benchmark's tuning split)"
    return "test"
