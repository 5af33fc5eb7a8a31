"""Evaluate a task file on a dataset, or predict labels for image files, preprocessing inputs exactly as the task
was trained (the input spec recorded in the task file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from .adapted.model import AdaptedModel
from .data.image import IMAGE_SUFFIXES
from .data.loading import ShardSampler, make_loader
from .data.registry import build_split, get_dataset
from .data.transforms import InputSpec, eval_transform
from .data.video import VideoTransform
from .data.video.datasets import VIDEO_SUFFIXES
from .errors import AdaptFormerError
from .evaluation import evaluate
from .media import Clip, decode_image, looks_like_video
from .objectives import Objective, get_objective
from .runtime.device import pick_device
from .runtime.precision import serving_precision
from .tasks import preprocessing_of
from .tasks.files import apply_task_tensors, recorded_backbone
from .tasks.format import read_task_file


@dataclass
class LoadedTask:
    model: nn.Module  # the adapted model, or its torch.compile wrapper
    classes: list[str]
    spec: InputSpec  # the preprocessing the task was trained with
    device: torch.device
    precision: str
    objective: Objective = field(default_factory=lambda: get_objective(None))


def load_for_inference(
    task: str | Path,
    model_name: str | None = None,
    checkpoint: str | None = None,
    pretrained: bool = True,
    device: str = "auto",
    precision: str = "auto",
    check_backbone: bool = True,
    compile: bool = False,
    quantize: str | None = None,
) -> LoadedTask:
    header, tensors = read_task_file(task)  # the file is read once, and before any backbone is built
    meta = header.meta
    backbone, source = recorded_backbone(meta, task, model_name, checkpoint, pretrained)
    model = apply_task_tensors(AdaptedModel(backbone, source), meta, tensors, task, check_backbone=check_backbone)
    torch_device = pick_device(device)
    resolved = serving_precision(precision, torch_device, quantize)
    model = model.to(torch_device).eval()
    if quantize is not None:  # after the backbone check above: the fingerprint is of the float weights
        model.quantize_backbone(quantize)
    return LoadedTask(
        torch.compile(model) if compile else model,
        list(meta["classes"]),
        preprocessing_of(meta, model),
        torch_device,
        resolved,
        get_objective(meta.get("objective")),
    )


def evaluate_task(
    loaded: LoadedTask,
    dataset: str,
    data_root: str | None,
    train_split: bool = False,
    batch_size: int = 128,
    workers: int = 2,
    verify: bool = True,
    max_samples: int | None = None,
    test_clips: int = 1,
    test_crops: int = 1,
    **dataset_options,
) -> dict:
    """The task's scores on a dataset split (top-1/top-5/loss, or mAP/per-class AP/loss for a multi-label task),
    preprocessed as the task was trained. Video tasks sample
    ``spec.frames`` frames ``spec.sampling_rate`` apart and average ``test_clips`` x ``test_crops`` views."""
    spec = loaded.spec
    if get_dataset(dataset).modality != spec.modality:
        raise AdaptFormerError(
            f"--dataset {dataset}: a {get_dataset(dataset).modality} dataset, the task takes {spec.modality}s"
        )
    if spec.modality == "video":
        transform = VideoTransform(spec, False, crops=test_crops)
        dataset_options = {
            **dataset_options,
            "num_frames": spec.frames,
            "sampling_rate": spec.sampling_rate or 4,
            "test_clips": test_clips,
        }
    else:
        transform = eval_transform(spec)
    wanted = get_dataset(dataset).objective
    if wanted != loaded.objective.name:
        raise AdaptFormerError(f"--dataset {dataset}: a {wanted} dataset, the task is {loaded.objective.name}")
    split = build_split(dataset, data_root, train_split, transform, verify=verify, **dataset_options)
    if len(split.classes) != len(loaded.classes):
        raise AdaptFormerError(
            f"--dataset {dataset}: has {len(split.classes)} classes, the task was trained on {len(loaded.classes)}"
        )
    data = split.dataset
    if max_samples:
        data = torch.utils.data.Subset(data, range(min(max_samples, len(data))))
    loader = make_loader(data, batch_size, ShardSampler(len(data), 1, 0), workers, 0, drop_last=False)
    return evaluate(
        loaded.model,
        loader,
        loaded.device,
        loaded.precision,
        len(loaded.classes),
        loaded.spec.input_ndim,
        show_progress=True,
        objective=loaded.objective,
    )


def collect_media(paths: list[str]) -> list[Path]:
    """The files named, and the images and videos found (recursively, by suffix) in the folders named."""
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise AdaptFormerError(f"{path}: no such file or directory")
    if not files:
        raise AdaptFormerError(f"no images or videos found in {', '.join(paths)}")
    return files


def open_media(paths: list[Path]) -> tuple[dict[str, Image.Image | Clip], dict[str, str]]:
    """Each file as an RGB image (EXIF orientation applied, wide modes rescaled) or, by its suffix, as a video
    clip; and a one-line reason for each file that is neither."""
    opened, errors = {}, {}
    for path in paths:
        try:
            opened[str(path)] = Clip.from_file(path) if looks_like_video(path.name) else decode_image(path)
        except AdaptFormerError as error:
            errors[str(path)] = str(error)
    return opened, errors
