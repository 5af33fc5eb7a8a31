"""Read ViT checkpoints from elsewhere safely and bring them to timm's key format.

Handles what users actually have (docs/checkpoints.md): flat timm state dicts; ``{'model': ...}`` /
``{'state_dict': ...}`` / ``{'module': ...}`` wrappers; MAE pretraining checkpoints (decoder, ``mask_token``
dropped; an ``argparse.Namespace`` in ``args`` is allowed); ``module.`` / ``_orig_mod.`` prefixes; and the
AdaptFormer reference layout (``attn.{q,k,v}_proj`` split, ``fc1``/``fc2`` outside ``mlp``).
Pickles are read with ``weights_only=True``; safetensors files need no trust at all.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from ..errors import AdaptFormerError

WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
STRIP_PREFIXES = ("module.", "_orig_mod.")
MAE_ONLY = re.compile(r"^(mask_token|decoder_.*|decoder\..*|encoder_to_decoder\..*)$")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file into a flat ``{name: tensor}`` dict without executing untrusted code."""
    path = Path(path)
    if not path.is_file():
        raise AdaptFormerError(f"checkpoint {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            blob = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, foreign pickle class, wrong format
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AdaptFormerError(f"checkpoint {path}: cannot be read ({first_line})") from None
    return unwrap_state_dict(blob, path)


def unwrap_state_dict(blob: object, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    while isinstance(blob, dict) and not _is_flat(blob):
        inner = next((blob[k] for k in WRAPPER_KEYS if isinstance(blob.get(k), dict)), None)
        if inner is None:
            raise AdaptFormerError(
                f"checkpoint {path}: expected a state dict or one wrapped in {'/'.join(WRAPPER_KEYS)}, "
                f"found keys {sorted(blob)[:6]}"
            )
        blob = inner
    if not isinstance(blob, dict) or not blob:
        raise AdaptFormerError(f"checkpoint {path}: holds no tensors")
    state = {}
    for key, value in blob.items():
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


def _is_flat(blob: dict) -> bool:
    return bool(blob) and all(isinstance(v, torch.Tensor) for v in blob.values())


def to_timm_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop MAE pretraining-only keys and convert the AdaptFormer reference layout to timm's names."""
    state = {k: v for k, v in state.items() if not MAE_ONLY.match(k)}
    if any(".attn.q_proj." in k for k in state):
        state = _merge_split_qkv(state)
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^blocks\.(\d+)\.fc([12])\.", r"blocks.\1.mlp.fc\2.", key)
        renamed[key] = value
    return renamed


def _merge_split_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        match = re.match(r"^(blocks\.\d+\.attn\.)q_proj\.(weight|bias)$", key)
        if match:
            prefix, kind = match.groups()
            parts = [state.get(f"{prefix}{p}_proj.{kind}") for p in "qkv"]
            if any(part is None for part in parts):
                raise AdaptFormerError(f"checkpoint has {key} but not all of q/k/v_proj.{kind}")
            out[f"{prefix}qkv.{kind}"] = torch.cat(parts, dim=0)
        elif not re.match(r"^blocks\.\d+\.attn\.[kv]_proj\.", key):
            out[key] = value
    return out
