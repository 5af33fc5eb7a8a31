"""The tuning methods compared in the paper, as a small registry, and :func:`adapt`, the one-call entry point.

Each method says what it adds to a backbone and which parts train:

============  ==========================================  ==============================
method        adds                                        trains
============  ==========================================  ==============================
adaptformer   an AdaptMLP beside the MLP of chosen blocks  adapters + head (+ fc_norm)
linear        nothing                                     head (+ fc_norm)
vpt           prompt tokens (deep or shallow)             prompts + head (+ fc_norm)
full          nothing                                     everything
============  ==========================================  ==============================

The head of every method is BatchNorm1d(affine=False) + Linear (see ``backbones/heads.py``). ``fc_norm`` is
trained when the backbone has one with parameters (mean-pooled models), as in the reference video code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

from ..backbones.heads import make_head
from ..errors import AdaptFormerError
from .adaptmlp import AdapterConfig
from .freeze import freeze_except
from .inject import add_adapter, block_dim
from .layers import LayerSpec, resolve_layers
from .vpt import PROMPTS_ATTR, VPT_MODES, add_prompts

CONFIG_ATTR = "adaptformer_config"
TUNED_ATTR = "adaptformer_tuned"


@dataclass(frozen=True)
class AdaptConfig:
    """Everything needed to re-create an adapted model on a fresh backbone (stored in task files)."""

    method: str = "adaptformer"
    bottleneck: int = 64
    scale: float | str = 0.1
    layernorm: str = "none"
    dropout: float = 0.1
    init: str = "lora"
    placement: str = "parallel"
    layers: LayerSpec = "all"
    vpt_tokens: int = 1
    vpt_mode: str = "deep"
    head_batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AdaptFormerError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if not isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if self.method == "adaptformer":
            self.adapter_config()  # validates the adapter options
        if self.method == "vpt":
            if isinstance(self.vpt_tokens, bool) or not isinstance(self.vpt_tokens, int) or self.vpt_tokens < 1:
                raise AdaptFormerError(f"vpt_tokens: expected a positive integer, got {self.vpt_tokens!r}")
            if self.vpt_mode not in VPT_MODES:
                raise AdaptFormerError(f"vpt_mode: expected one of {', '.join(VPT_MODES)}, got {self.vpt_mode!r}")

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(
            bottleneck=self.bottleneck,
            scale=self.scale,
            layernorm=self.layernorm,
            dropout=self.dropout,
            init=self.init,
            placement=self.placement,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not isinstance(self.layers, str):
            data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdaptFormerError(f"unknown adaptation option(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    inject: Callable[[nn.Module, AdaptConfig], list[str]]  # returns the tuned module/parameter prefixes


def _inject_adaptformer(model: nn.Module, cfg: AdaptConfig) -> list[str]:
    adapter_cfg = cfg.adapter_config()
    tuned = []
    for index in resolve_layers(cfg.layers, len(model.blocks)):
        block = model.blocks[index]
        add_adapter(block, block_dim(block), adapter_cfg, index)
        tuned.append(f"blocks.{index}.adaptmlp")
    return tuned


def _inject_vpt(model: nn.Module, cfg: AdaptConfig) -> list[str]:
    add_prompts(model, cfg.vpt_tokens, cfg.vpt_mode, resolve_layers(cfg.layers, len(model.blocks)))
    return [PROMPTS_ATTR]


def _inject_nothing(model: nn.Module, cfg: AdaptConfig) -> list[str]:
    return []


METHODS: dict[str, Method] = {
    "adaptformer": Method("adaptformer", "AdaptMLP adapters beside the frozen MLPs + head", _inject_adaptformer),
    "linear": Method("linear", "linear probe: frozen backbone, BatchNorm + Linear head", _inject_nothing),
    "vpt": Method("vpt", "visual prompt tuning (deep or shallow) + head", _inject_vpt),
    "full": Method("full", "full fine-tuning: every weight trains", _inject_nothing),
}


def check_vit(model: nn.Module) -> None:
    """The backbone must look like a timm VisionTransformer."""
    missing = [attr for attr in ("blocks", "embed_dim", "reset_classifier") if not hasattr(model, attr)]
    if missing:
        raise AdaptFormerError(
            f"{type(model).__name__} is not a timm VisionTransformer (missing {', '.join(missing)}); "
            "create the backbone with timm.create_model('vit_...')"
        )
    if getattr(model, "head_dist", None) is not None:
        raise AdaptFormerError("distilled DeiT models (two heads) are not supported; use the non-distilled deit_*")
    if hasattr(model, CONFIG_ATTR):
        raise AdaptFormerError("this model is already adapted; adapt a fresh backbone")


def adapt(
    model: nn.Module,
    method: str | None = None,
    *,
    num_classes: int | None = None,
    config: AdaptConfig | None = None,
    **options: Any,
) -> nn.Module:
    """Adapt a timm ViT in place and return it.

    ``adapt(model, method="adaptformer", bottleneck=64, scale=0.1, placement="parallel")`` adds the method's
    modules, replaces the head with BatchNorm1d(affine=False) + Linear (``num_classes`` defaults to the
    model's), freezes everything else and locks the frozen parts in eval mode. Pass either ``config`` or
    keyword options (the fields of :class:`AdaptConfig`).
    """
    if config is None:
        config = AdaptConfig(method=method or "adaptformer", **options)
    elif options or method not in (None, config.method):
        raise AdaptFormerError("pass either config=AdaptConfig(...) or keyword options, not both")
    check_vit(model)
    num_classes = model.num_classes if num_classes is None else num_classes
    if not isinstance(num_classes, int) or num_classes < 1:
        raise AdaptFormerError(f"num_classes: expected a positive integer, got {num_classes!r}")
    model.reset_classifier(num_classes)
    reference = next(model.blocks.parameters())
    model.head = make_head(model.num_features, num_classes, batchnorm=config.head_batchnorm).to(
        device=reference.device, dtype=reference.dtype
    )
    tuned = METHODS[config.method].inject(model, config) + ["head"]
    fc_norm = getattr(model, "fc_norm", None)
    if fc_norm is not None and any(True for _ in fc_norm.parameters()):
        tuned.append("fc_norm")
    if config.method == "full":
        tuned = [""]
    freeze_except(model, tuned)
    setattr(model, CONFIG_ATTR, config)
    setattr(model, TUNED_ATTR, tuned)
    return model


def adapt_config_of(model: nn.Module) -> AdaptConfig:
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        raise AdaptFormerError("the model is not adapted; call adaptformer.adapt(model, ...) first")
    return config


def tuned_prefixes(model: nn.Module) -> list[str]:
    adapt_config_of(model)
    return list(getattr(model, TUNED_ATTR))
