"""adaptformer: adapt frozen Vision Transformers to many tasks with AdaptMLP adapters (AdaptFormer, arXiv 2205.13535).

import timm, adaptformer
model = adaptformer.adapt(timm.create_model("vit_base_patch16_224"), "adaptformer", num_classes=100, bottleneck=64)
model.add_task("svhn", adaptformer.AdaptFormerConfig(bottleneck=16), classes=10)
"""

from .adapted.model import AdaptedModel, BackboneSource, adapt, create_model
from .backbones.timm import create_backbone
from .errors import AdaptFormerError
from .methods import *  # noqa: F403 - every method's config and the registry
from .methods import __all__ as _METHOD_EXPORTS
from .report import ParameterReport, parameter_report
from .tasks import apply_task, import_reference_checkpoint, load_task, read_task, save_task
from .version import __version__

__all__ = [
    "AdaptFormerError",
    "AdaptedModel",
    "BackboneSource",
    "ParameterReport",
    "__version__",
    "adapt",
    "apply_task",
    "create_backbone",
    "create_model",
    "import_reference_checkpoint",
    "load_task",
    "parameter_report",
    "read_task",
    "save_task",
    *_METHOD_EXPORTS,
]
