"""Training configuration: one flat dataclass, defaults = the paper's image recipe (DESIGN.md §1).

Precedence: dataclass defaults < YAML file (``--config image/cifar100_adaptformer`` or a path) < command-line
options. The resolved configuration is written to the run directory as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..adapters.methods import AdaptConfig
from ..errors import AdaptFormerError


@dataclass
class TrainConfig:
    # data
    dataset: str = "cifar100"
    data_root: str | None = None
    download: bool = False
    verify: bool = True
    max_train_samples: int | None = None  # a prefix of the training set, for quick runs
    max_eval_samples: int | None = None
    # backbone
    model: str = "vit_base_patch16_224"
    checkpoint: str | None = None
    pretrained: bool = True
    img_size: int | None = None  # run the backbone at another input size (position embeddings are resampled)
    model_kwargs: dict | None = None  # extra timm.create_model keywords, e.g. {drop_path_rate: 0.1}
    # method (see AdaptConfig)
    method: str = "adaptformer"
    bottleneck: int = 64
    scale: float | str = 0.1
    layernorm: str = "none"
    adapter_dropout: float = 0.1
    init: str = "lora"
    placement: str = "parallel"
    layers: str = "all"
    vpt_tokens: int = 1
    vpt_mode: str = "deep"
    head_batchnorm: bool = True
    # optimisation: SGD momentum 0.9, wd 0, lr = blr * effective_batch / 256, warm-up + half-cycle cosine
    epochs: int = 100
    warmup_epochs: float = 20
    batch_size: int = 128  # per process and micro-step
    effective_batch: int | None = 1024  # batch_size * accumulation * world size; None: no accumulation
    blr: float = 0.1
    lr: float | None = None  # absolute learning rate; overrides blr
    min_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    # augmentation
    augment: bool = True
    hflip: float = 0.5
    scale_min: float = 0.08
    crop_pct: float | None = None  # evaluation: Resize(size / crop_pct) + CenterCrop(size); None: the backbone's
    # execution
    precision: str = "auto"
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    # run directory
    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    eval_every: int = 1
    checkpoint_every_steps: int = 0  # also checkpoint mid-epoch every N optimizer steps (0: epoch ends only)
    tensorboard: bool = True

    def adapt_config(self) -> AdaptConfig:
        return AdaptConfig(
            method=self.method,
            bottleneck=self.bottleneck,
            scale=self.scale,
            layernorm=self.layernorm,
            dropout=self.adapter_dropout,
            init=self.init,
            placement=self.placement,
            layers=self.layers,
            vpt_tokens=self.vpt_tokens,
            vpt_mode=self.vpt_mode,
            head_batchnorm=self.head_batchnorm,
        )

    def timm_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.model_kwargs or {})
        if self.img_size:
            kwargs["img_size"] = self.img_size
        return kwargs

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"{self.dataset}-{self.method}"

    def validate(self) -> TrainConfig:
        self.adapt_config()
        for name in ("epochs", "batch_size", "workers", "eval_every"):
            value = getattr(self, name)
            minimum = 0 if name == "workers" else 1
            if not isinstance(value, int) or value < minimum:
                raise AdaptFormerError(f"--{name.replace('_', '-')}: expected an integer >= {minimum}, got {value!r}")
        if self.effective_batch is not None and self.effective_batch < 1:
            raise AdaptFormerError(f"--effective-batch: expected a positive integer, got {self.effective_batch}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise AdaptFormerError(f"--warmup-epochs: expected 0..epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.resume and self.overwrite:
            raise AdaptFormerError("--resume and --overwrite exclude each other")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
# the fields that make up the AdaptConfig (see TrainConfig.adapt_config); `params` accepts exactly these
METHOD_FIELDS = (
    "method",
    "bottleneck",
    "scale",
    "layernorm",
    "adapter_dropout",
    "init",
    "placement",
    "layers",
    "vpt_tokens",
    "vpt_mode",
    "head_batchnorm",
)
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
}


def config_search_path(name: str) -> Path:
    """A config by path, or by name under the package's ``configs/`` (``image/cifar100_adaptformer``)."""
    candidate = Path(name)
    if candidate.is_file():
        return candidate
    packaged = Path(str(resources.files("adaptformer") / "configs"))
    for path in (packaged / name, packaged / f"{name}.yaml"):
        if path.is_file():
            return path
    available = sorted(str(p.relative_to(packaged).with_suffix("")) for p in packaged.rglob("*.yaml"))
    raise AdaptFormerError(f"--config {name}: no such file or packaged config (available: {', '.join(available)})")


def load_config_file(name: str) -> dict[str, Any]:
    path = config_search_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise AdaptFormerError(f"--config {path}: invalid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AdaptFormerError(f"--config {path}: expected a mapping of option: value")
    unknown = sorted(set(data) - set(FIELD_TYPES))
    if unknown:
        raise AdaptFormerError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    return data


def make_config(file_values: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return TrainConfig(**values).validate()
    except TypeError as error:
        raise AdaptFormerError(f"configuration: {error}") from None


def list_packaged_configs() -> list[str]:
    packaged = Path(str(resources.files("adaptformer") / "configs"))
    return sorted(str(p.relative_to(packaged).with_suffix("")) for p in packaged.rglob("*.yaml"))


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
