"""Optional dependencies: a feature whose extra is not installed says, in one line, what to install.

``pip install adaptformer`` brings the core (torch, torchvision, timm, safetensors, numpy, pillow, pyyaml, tqdm,
scikit-learn for validation splits); the rest are extras: ``[hf]`` Hugging Face models, ``[video]`` PyAV,
``[serve]`` the HTTP server, ``[report]`` plots and TensorBoard, ``[demo]`` the demos' datasets, ``[export]``
ONNX programs (onnx, onnxscript, onnxruntime), ``[all]``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import AdaptFormerError

#: importable module -> (distribution, extra)
EXTRAS: dict[str, tuple[str, str]] = {
    "transformers": ("transformers", "hf"),
    "av": ("av (PyAV)", "video"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "multipart": ("python-multipart", "serve"),
    "prometheus_client": ("prometheus-client", "serve"),
    "fastapi_offline": ("fastapi-offline", "serve"),
    "matplotlib": ("matplotlib", "report"),
    "tensorboard": ("tensorboard", "report"),
    "skimage": ("scikit-image", "demo"),
    "ray": ("ray[serve,tune]", "ray"),
    "optuna": ("optuna", "tune"),
    "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"),
    "onnxruntime": ("onnxruntime", "export"),
}


class MissingExtra(AdaptFormerError):
    """A feature's optional dependency is not installed."""


def install_hint(module: str) -> str:
    distribution, extra = EXTRAS[module.split(".")[0]]
    return f'{distribution} is not installed: pip install "adaptformer[{extra}]"'


def require(module: str, feature: str) -> ModuleType:
    """``importlib.import_module(module)``, or one line naming the feature and the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        if top not in EXTRAS or (error.name and error.name.split(".")[0] != top):
            raise  # a broken installation of something else: not a missing extra
        raise MissingExtra(f"{feature} needs {install_hint(module)}") from None
