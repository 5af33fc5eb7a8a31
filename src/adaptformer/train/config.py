"""Training configuration: one dataclass whose defaults are the paper's image recipe.

The method's own options (``bottleneck``, ``vpt_tokens``, ...) are not repeated here: they belong to the method
configs (``methods/*/config.py``), and the run holds its method's typed config in ``method_config``, built once
from the flat keys. Files and flags use one flat namespace:
a YAML file or the command line may say ``bottleneck: 16`` next to ``epochs: 30``; :meth:`TrainConfig.from_flat`
sorts the keys and refuses unknown ones, naming them and listing the valid ones.

Precedence: dataclass defaults < YAML file (``--config image/cifar100_adaptformer`` or a path) < command-line
options. The resolved configuration, every method option included, is written to the run directory as
``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..backbones.video import is_video_model
from ..data.registry import BENCHMARK_SPLITS, DATASETS, dataset_names
from ..data.transforms import RESIZE_MODES, TRAIN_CROPS
from ..errors import AdaptFormerError
from ..methods.base import MethodConfig
from ..methods.registry import (
    make_method_config,
    method_option_fields,
    methods_with_option,
    option_names,
    registered_methods,
)
from ..runtime.device import parse_device
from ..runtime.precision import PRECISIONS
from ..utils.options import check_choice, check_int, check_number, option

WARMUP_SHARE = 0.2  # warm-up share of the epochs when --warmup-epochs is not given (the paper: 20 of 100)


@dataclass
class TrainConfig:
    # data
    dataset: str = option("cifar100", "dataset name (adaptformer train --help lists them; see README)")
    data_root: str | None = option(None, "dataset directory, in the dataset's official layout")
    download: bool = option(False, "download the official archives first (needs a network)")
    verify: bool = option(True, "MD5-check CIFAR/SVHN files (--no-verify for re-packed files)")
    max_train_samples: int | None = option(None, "train on a prefix of the training set (quick runs)")
    max_eval_samples: int | None = option(None, "evaluate on a prefix of the test set")
    validation_split: float = option(
        0.0, "hold out this fraction of the training set (stratified, fixed) and evaluate on it, not on the test set"
    )
    validation_fold: str | None = option(
        None, "k/K: hold out fold k of K stratified folds of the training set instead (k-fold validation)"
    )
    # video data (ignored by image datasets)
    num_frames: int = option(8, "video: frames per clip (an image backbone is inflated to them)")
    sampling_rate: int = option(4, "video: frames between sampled frames (dense sampling; SSv2 uses segments)")
    test_clips: int = option(1, "video: temporal clips per test video, logits averaged (paper: 4 HMDB51, 2 SSv2)")
    test_crops: int = option(1, "video: spatial crops per test clip, 1 or 3 (paper: 3)")
    split: int = option(1, "hmdb51: official split 1, 2 or 3")
    train_list: str | None = option(None, "videolist: file of '<path> <label>' lines (paths relative to --data-root)")
    test_list: str | None = option(None, "videolist: the test list")
    label_map: str | None = option(None, "videolist: class names, one per line (line k is class k)")
    # backbone
    model: str = option("vit_base_patch16_224", "timm model name or embedded backbone (adaptformer/vit-tiny-cifar10)")
    checkpoint: str | None = option(None, "local backbone weights (timm, MAE or AdaptFormer-reference layout)")
    pretrained: bool = option(True, "load pretrained weights (--no-pretrained: random, for smoke tests)")
    img_size: int | None = option(None, "run the backbone at this input size (position embeddings are resampled)")
    model_kwargs: dict | None = option(None, 'extra timm.create_model keywords as JSON, e.g. {"drop_path_rate": 0.1}')
    # method: the name here, its typed config in method_config (flat keys in files and flags)
    method: str = option("adaptformer", "a registered method (`adaptformer methods` lists them)")
    method_config: MethodConfig | None = option(None, "the method's typed config (its options: flat keys / flags)")
    task_name: str | None = option(None, "name of the task in its task files (default: the dataset name)")
    # optimisation: SGD momentum 0.9, wd 0, lr = blr * effective_batch / 256, warm-up + half-cycle cosine
    epochs: int = option(100, "training epochs")
    warmup_epochs: float | None = option(
        None, "linear warm-up epochs (per iteration) before the half-cycle cosine; default: a fifth of --epochs"
    )
    batch_size: int = option(128, "batch per process and micro-step")
    effective_batch: int | None = option(1024, "batch per optimizer step over all processes (accumulation fills it)")
    blr: float = option(0.1, "base lr: lr = blr * effective_batch / 256")
    lr: float | None = option(None, "absolute learning rate (overrides blr)")
    min_lr: float = option(0.0, "learning rate at the end of the cosine")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "SGD weight decay")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing")
    # augmentation and preprocessing
    augment: bool = option(True, "RandomResizedCrop + flip for training (--no-augment: the eval transform)")
    benchmark_split: str = option(
        "final", "VTAB-1k / FGVC: final (train800val200 -> test) or tune (train800 -> val200, for a search)"
    )
    train_crop: str = option(
        "random_resized",
        "random_resized: RandomResizedCrop; pad: resize to the input size, pad by 1/8, random crop (small images; "
        "evaluation then resizes without a crop)",
    )
    resize_mode: str | None = option(
        None, "eval resize: crop (short side + centre crop) or squash (both sides, no crop); default: crop"
    )
    hflip: float = option(0.5, "probability of a horizontal flip")
    scale_min: float = option(0.08, "smallest area fraction of RandomResizedCrop")
    crop_pct: float | None = option(None, "eval: Resize(size / crop_pct) + CenterCrop(size); default: the backbone's")
    interpolation: str | None = option(None, "bicubic | bilinear | nearest; default: the backbone's")
    cache_features: bool = option(False, "linear probe: encode the images up front, train the head on the features")
    feature_views: int = option(
        4, "with --cache-features and augmentation: augmented copies encoded (epoch e: e mod N)"
    )
    # execution
    precision: str = option("auto", "auto | fp32 | bf16 | fp16 (auto: bf16 where the CPU/GPU has it natively)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    compile: bool = option(False, "torch.compile the model (faster steps after a one-off compile)")
    grad_checkpointing: bool = option(
        False, "recompute each block's activations in the backward pass (less memory for big models or long clips)"
    )
    workers: int = option(2, "data-loading worker processes")
    seed: int = option(0, "random seed (initial weights, data order, augmentation)")
    # run directory
    out: str | None = option(None, "run directory (default runs/<dataset>-<method>)")
    resume: bool = option(False, "continue the run in --out from its checkpoint")
    overwrite: bool = option(False, "replace the run in --out")
    eval_every: int = option(1, "evaluate every N epochs (and after the last)")
    checkpoint_every_steps: int = option(0, "also checkpoint mid-epoch every N optimizer steps (0: epoch ends)")
    tensorboard: bool = option(True, "write TensorBoard scalars beside metrics.jsonl")

    # ---- the method ----------------------------------------------------------------------------------------
    @property
    def encoded_views(self) -> int:
        """How many copies of the training set --cache-features encodes (one when nothing is augmented)."""
        return self.feature_views if self.augment else 1

    def timm_kwargs(self, video: bool = False) -> dict[str, Any]:
        """Keywords for the backbone; a video dataset asks for ``num_frames`` (an image ViT is then inflated), and
        a video backbone is built for ``--num-frames`` whatever it trains on (its image tasks then share it with
        the video tasks trained at those frames)."""
        kwargs = dict(self.model_kwargs or {})
        if self.img_size:
            kwargs["img_size"] = self.img_size
        if video or is_video_model(self.model):
            kwargs.setdefault("num_frames", self.num_frames)
        return kwargs

    @property
    def warmup(self) -> float:
        """Warm-up epochs: ``--warmup-epochs``, else the paper's share of the run (20 of its 100 epochs)."""
        return self.warmup_epochs if self.warmup_epochs is not None else WARMUP_SHARE * self.epochs

    def video_options(self) -> dict[str, Any]:
        """The dataset options of video datasets (each builder takes the ones it knows)."""
        names = ("num_frames", "sampling_rate", "test_clips", "split", "train_list", "test_list", "label_map")
        return {name: getattr(self, name) for name in names}

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"{self.dataset}-{self.method}"

    def validate(self) -> TrainConfig:
        if self.method_config is None:
            self.method_config = make_method_config(self.method)
        if self.method_config.name != self.method:
            raise AdaptFormerError(f"--method {self.method}: the method config is {self.method_config.name}'s")
        for name in ("epochs", "batch_size", "eval_every", "num_frames", "sampling_rate", "test_clips"):
            check_int(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        for name in ("workers", "checkpoint_every_steps", "seed"):
            check_int(f"--{name.replace('_', '-')}", getattr(self, name), 0)
        check_int("--effective-batch", self.effective_batch, 1, allow_none=True)
        check_number("--warmup-epochs", self.warmup_epochs, 0, self.epochs, allow_none=True)
        check_number("--crop-pct", self.crop_pct, 0.01, 1.0, allow_none=True)
        check_number("--hflip", self.hflip, 0.0, 1.0)
        check_number("--scale-min", self.scale_min, 0.0, 1.0)
        if self.resize_mode is not None:
            check_choice("--resize-mode", self.resize_mode, RESIZE_MODES)
        check_choice("--benchmark-split", self.benchmark_split, BENCHMARK_SPLITS)
        check_choice("--train-crop", self.train_crop, TRAIN_CROPS)
        if self.validation_fold is not None:
            parse_fold(self.validation_fold)
            if self.validation_split:
                raise AdaptFormerError("--validation-fold and --validation-split: give one of them")
        check_number("--validation-split", self.validation_split, 0.0, 0.9)
        check_choice("--precision", self.precision, PRECISIONS)
        if self.device != "auto":
            parse_device(str(self.device))  # the same check as when the device is picked
        check_number("--lr", self.lr, 1e-12, None, allow_none=True)
        check_number("--blr", self.blr, 1e-12)
        check_number("--min-lr", self.min_lr, 0.0)
        check_number("--momentum", self.momentum, 0.0, 1.0)
        check_number("--weight-decay", self.weight_decay, 0.0)
        check_number("--label-smoothing", self.label_smoothing, 0.0, 0.99)
        check_int("--img-size", self.img_size, 1, allow_none=True)
        check_int("--max-train-samples", self.max_train_samples, 1, allow_none=True)
        check_int("--max-eval-samples", self.max_eval_samples, 1, allow_none=True)
        if self.model_kwargs is not None and not isinstance(self.model_kwargs, dict):
            raise AdaptFormerError(f"--model-kwargs: expected a mapping of timm keywords, got {self.model_kwargs!r}")
        if self.resume and self.overwrite:
            raise AdaptFormerError("--resume and --overwrite exclude each other")
        if self.cache_features and not self.method_config.caches_features:
            keeps = ", ".join(n for n, m in registered_methods().items() if m.config.caches_features)
            raise AdaptFormerError(
                f"--cache-features: {self.method} changes the backbone's features; only {keeps} leaves them unchanged"
            )
        check_int("--feature-views", self.feature_views, 1)
        if self.test_crops not in (1, 3):
            raise AdaptFormerError(f"--test-crops: expected 1 or 3, got {self.test_crops!r}")
        return self

    # ---- flat form: what YAML files, flags and config.yaml hold ---------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field and every option of the method (resolved, defaults included), in one flat mapping."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "method_config"}
        method = (self.method_config or make_method_config(self.method)).to_dict()
        data.update({k: v for k, v in method.items() if k != "method"})
        return data

    @classmethod
    def from_flat(cls, values: dict[str, Any], source: str = "configuration") -> TrainConfig:
        values = {**dataset_recipe(values.get("dataset")), **values}  # a benchmark's protocol, unless given
        config_values, options = split_flat(values, source)
        method_config = make_method_config(config_values.get("method", "adaptformer"), **options)
        try:
            return cls(**config_values, method_config=method_config).validate()
        except TypeError as error:
            raise AdaptFormerError(f"{source}: {error}") from None


def parse_fold(text: Any) -> tuple[int, int]:
    """``"k/K"`` -> (k, K) with 0 <= k < K and K >= 2, or one line naming --validation-fold."""
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        fold, folds = int(parts[0]), int(parts[1])
        if folds >= 2 and 0 <= fold < folds:
            return fold, folds
    raise AdaptFormerError(f"--validation-fold: expected k/K with K >= 2 and 0 <= k < K, e.g. 0/5, got {text!r}")


def dataset_recipe(name: Any) -> dict[str, Any]:
    """The training options a dataset's protocol fixes (VTAB-1k: squash resize, no augmentation), or none."""
    if not isinstance(name, str) or name not in dataset_names():
        return {}
    return dict(DATASETS[name].recipe)


def split_flat(values: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat keys -> (TrainConfig fields, method options); unknown keys and other methods' options are refused."""
    own = {f.name for f in fields(TrainConfig)} - {"method_config"}
    method_keys = set(method_option_fields())
    unknown = sorted(set(values) - own - method_keys - {"method_options"})
    if unknown:
        valid = ", ".join(sorted(own | method_keys))
        raise AdaptFormerError(f"{source}: unknown option(s) {', '.join(unknown)} (valid: {valid})")
    options = dict(values.get("method_options") or {})
    options.update({k: v for k, v in values.items() if k in method_keys})
    method = values.get("method", "adaptformer")
    valid_for_method = option_names(method)
    for name in options:
        if name not in valid_for_method:
            owners = ", ".join(methods_with_option(name))
            raise AdaptFormerError(f"{source}: {name} is an option of {owners}, not of method {method}")
    return {k: v for k, v in values.items() if k in own}, options


# may differ between a run and its resumption: they do not change what is trained
RUN_CONTROL = {
    "resume",
    "overwrite",
    "out",
    "workers",
    "tensorboard",
    "eval_every",
    "checkpoint_every_steps",
    "download",
    "verify",
    "compile",
    "grad_checkpointing",
    "device",
}


def packaged_configs_dir() -> Path:
    return Path(str(resources.files("adaptformer") / "configs"))


def config_search_path(name: str) -> Path:
    """A config by path, or by name under the package's ``configs/`` (``image/cifar100_adaptformer``)."""
    candidate = Path(name)
    if candidate.is_file():
        return candidate
    packaged = packaged_configs_dir()
    for path in (packaged / name, packaged / f"{name}.yaml"):
        if path.is_file():
            return path
    raise AdaptFormerError(
        f"--config {name}: no such file or packaged config (available: {', '.join(list_packaged_configs())})"
    )


def read_yaml_mapping(path: Path, option_name: str = "--config") -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise AdaptFormerError(f"{option_name} {path}: invalid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AdaptFormerError(f"{option_name} {path}: expected a mapping of option: value")
    return data


def load_config_file(name: str) -> dict[str, Any]:
    """The flat option mapping of a YAML config, with unknown keys refused."""
    path = config_search_path(name)
    data = read_yaml_mapping(path)
    split_flat(data, source=f"--config {path}")
    return data


def make_config(file_values: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_flat({**file_values, **{k: v for k, v in overrides.items() if v is not None}})


def list_packaged_configs() -> list[str]:
    packaged = packaged_configs_dir()
    return sorted(str(p.relative_to(packaged).with_suffix("")) for p in packaged.rglob("*.yaml"))


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
