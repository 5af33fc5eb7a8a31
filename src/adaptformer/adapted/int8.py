"""A frozen backbone's Linear layers in int8 for CPU serving, with PyTorch's own dynamic quantization.

Each ``nn.Linear`` becomes ``Int8Linear``: its weights packed as int8 (``torch.ao.nn.quantized.dynamic.Linear``,
which quantizes its input on the fly and dequantizes in the GEMM's epilogue), run per sample. Per sample, because
the kernels take one activation scale for the whole tensor they are given: over a batch, a sample's answer would
move with the other samples in the batch (other requests, other tasks). A sample of a ViT is a few hundred tokens,
a GEMM large enough for the int8 kernels.

The weights are packed for one of PyTorch's two x86 int8 back ends, chosen by the CPU (``int8_engine``): oneDNN
where the CPU has AMX tiles (its int8 tile kernels ran a ViT-B/16 ``fc1`` 2.2-2.7x faster than fbgemm here), fbgemm
elsewhere (oneDNN capped at AVX512-VNNI only tied with it, and at AVX2 ran 2.5x slower). Both give the same
numbers: the same per-tensor scales, the same rounding.

Measured (``benchmarks/int8_serving.py``, README): per-token scales with ``torch._int_mm`` (exact independence,
torchao's W8A8 scheme) spent more on quantizing and rescaling outside the GEMM than the int8 GEMM saved on this
2-core CPU, and torchao's own int8 configuration ran no faster than fp32 in eager mode; one scale per batch was
the fastest and is the one that lets requests move each other's answers.

The hooks a task runs through (``taps.py``: LoRA's, BitFit's, SSF's sites on ``qkv``/``fc1``/...) move to the new
layer with their settings, so every method works on an int8 backbone unchanged.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

#: the hook tables a module keeps (all moved to the replacing layer)
HOOK_TABLES = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def int8_engine() -> str:
    """The quantized back end to pack for on this CPU: ``onednn`` with AMX, else ``fbgemm`` (module docstring)."""
    engines = torch.backends.quantized.supported_engines
    try:
        amx = bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a private helper: a build without it gets the portable choice
        amx = False
    if amx and "onednn" in engines:
        return "onednn"
    return "fbgemm" if "fbgemm" in engines else torch.backends.quantized.engine


@contextlib.contextmanager
def packing_for(engine: str):
    """Pack weights for ``engine``: PyTorch's engine is process-wide, so it is set only while packing (a packed
    layer keeps its back end whatever the setting is later)."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


class Int8Linear(nn.Module):
    """An ``nn.Linear`` with int8 weights, run per sample (see the module docstring)."""

    def __init__(self, linear: nn.Linear, engine: str | None = None):
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import default_dynamic_qconfig

        self.engine = engine or int8_engine()
        linear.qconfig = default_dynamic_qconfig
        with warnings.catch_warnings(), packing_for(self.engine):
            warnings.simplefilter("ignore")  # torch.ao.quantization is marked for migration to torchao
            self.packed = DynamicLinear.from_float(linear)
        del linear.qconfig
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # the float tensors, kept (not as state): the fingerprint of the weights at another input size is taken
        # over them, and blocks that read ``.weight`` get them exactly (a ViT block's Linear layers are also the
        # tasks' sites, which keep the float layers alive anyway)
        self.source_weight = linear.weight.detach()
        self.source_bias = linear.bias.detach() if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[0] == 1:
            return self.packed(x.float()).to(x.dtype)
        return torch.cat([self.packed(x[i : i + 1].float()) for i in range(x.shape[0])]).to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The float weights, for blocks that read them instead of calling the layer (EVA's and BEiT's attention
        pass ``qkv.weight`` to ``F.linear`` with their own bias): correct, at float speed."""
        return self.source_weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.source_bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 ({self.engine})"


def quantize_linear_layers(root: nn.Module, engine: str | None = None) -> int:
    """Replace every ``nn.Linear`` under ``root`` by an ``Int8Linear`` (packed for ``engine``, by default this
    CPU's) carrying its hooks; returns how many."""
    engine = engine or int8_engine()
    replaced = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:  # subclasses may be read, not called (MultiheadAttention's out_proj)
                layer = Int8Linear(child, engine).to(child.weight.device)
                for table in HOOK_TABLES:
                    setattr(layer, table, getattr(child, table))
                setattr(parent, name, layer)
                replaced += 1
    return replaced


def float_state_dict(root: nn.Module) -> dict[str, torch.Tensor]:
    """``root.state_dict()`` with every ``Int8Linear``'s int8 state replaced by the float weight and bias it was
    made from: what the state dict was before quantizing."""
    state = dict(root.state_dict())
    for path, module in root.named_modules():
        if isinstance(module, Int8Linear):
            prefix = f"{path}." if path else ""
            for key in [k for k in state if k.startswith(f"{prefix}packed.")]:
                del state[key]
            state[f"{prefix}weight"] = module.source_weight
            if module.source_bias is not None:
                state[f"{prefix}bias"] = module.source_bias
    return state
