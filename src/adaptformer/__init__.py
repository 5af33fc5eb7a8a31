"""adaptformer: adapt frozen Vision Transformers with AdaptMLP adapters (AdaptFormer, arXiv 2205.13535).

import timm, adaptformer
model = timm.create_model("vit_base_patch16_224", num_classes=100)
model = adaptformer.adapt(model, method="adaptformer", bottleneck=64, scale=0.1, placement="parallel")
"""

__version__ = "0.1.0"

from .adapters.adaptmlp import AdapterConfig, AdaptMLP  # noqa: E402
from .adapters.methods import METHODS, AdaptConfig, adapt  # noqa: E402
from .adapters.report import ParameterReport, parameter_report  # noqa: E402
from .backbones.timm import create_backbone  # noqa: E402
from .builder import create_model  # noqa: E402
from .errors import AdaptFormerError  # noqa: E402
from .tasks import apply_task, import_reference_checkpoint, load_task, save_task  # noqa: E402

__all__ = [
    "METHODS",
    "AdaptConfig",
    "AdaptFormerError",
    "AdaptMLP",
    "AdapterConfig",
    "ParameterReport",
    "adapt",
    "apply_task",
    "create_backbone",
    "create_model",
    "import_reference_checkpoint",
    "load_task",
    "parameter_report",
    "save_task",
]
