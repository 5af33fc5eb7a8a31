"""Mixed precision: bf16 autocast on CPUs that support it (2.5-4x faster here), fp16/bf16 on CUDA."""

from __future__ import annotations

import contextlib

import torch

from ..errors import AdaptFormerError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: how a task store holds its resident tasks' block tensors: auto = in the serving precision, fp32 = as trained,
#: int8 = the Linear layers' weight matrices as int8 (with a few scales), the rest as auto (``store/int8_weights.py``)
TASK_PRECISIONS = ("auto", "fp32", "int8")


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX512-BF16 / AMX); emulated bf16 would be slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``auto`` into a concrete precision for ``device``; reject unknown names."""
    if precision not in PRECISIONS:
        raise AdaptFormerError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise AdaptFormerError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"


QUANTIZATIONS = ("int8",)


def serving_precision(precision: str, device: torch.device, quantize: str | None = None) -> str:
    """``resolve_precision``, or with ``--quantize int8`` fp32 around the int8 layers on the CPU (their kernels);
    another precision or device beside it is refused in one line."""
    if quantize is None:
        return resolve_precision(precision, device)
    if quantize not in QUANTIZATIONS:
        raise AdaptFormerError(f"--quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}")
    if device.type != "cpu":
        raise AdaptFormerError(f"--quantize {quantize}: int8 backbones run on the CPU; pass --device cpu")
    if precision not in ("auto", "fp32"):
        raise AdaptFormerError(f"--quantize {quantize} runs fp32 around the int8 layers; drop --precision {precision}")
    return "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a disabled pass-through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
