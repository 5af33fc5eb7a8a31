"""adaptformer: adapt frozen Vision Transformers to many tasks with AdaptMLP adapters (AdaptFormer, arXiv 2205.13535).

import timm, adaptformer
model = adaptformer.adapt(timm.create_model("vit_base_patch16_224"), "adaptformer", num_classes=100, bottleneck=64)
model.add_task("svhn", adaptformer.AdaptFormerConfig(bottleneck=16), classes=10)
"""

from .adapted.model import AdaptedModel, BackboneSource, adapt, create_model
from .backbones.timm import create_backbone
from .errors import AdaptFormerError
from .methods import (
    METHODS,
    AdaptFormerConfig,
    AdaptMLP,
    FullConfig,
    LinearConfig,
    MethodConfig,
    Task,
    VPTConfig,
    make_method_config,
    register_method,
)
from .report import ParameterReport, parameter_report
from .tasks import apply_task, import_reference_checkpoint, load_task, read_task, save_task
from .version import __version__

__all__ = [
    "METHODS",
    "AdaptFormerConfig",
    "AdaptFormerError",
    "AdaptMLP",
    "AdaptedModel",
    "BackboneSource",
    "FullConfig",
    "LinearConfig",
    "MethodConfig",
    "ParameterReport",
    "Task",
    "VPTConfig",
    "__version__",
    "adapt",
    "apply_task",
    "create_backbone",
    "create_model",
    "import_reference_checkpoint",
    "load_task",
    "make_method_config",
    "parameter_report",
    "read_task",
    "register_method",
    "save_task",
]
