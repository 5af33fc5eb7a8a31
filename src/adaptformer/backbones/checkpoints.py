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

from ..errors import AdaptFormerError, first_line

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
        raise AdaptFormerError(f"checkpoint {path}: cannot be read ({first_line(error)})") from None
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
    state = fuse_split_qkv({k: v for k, v in state.items() if not MAE_ONLY.match(k)})
    return {re.sub(r"^blocks\.(\d+)\.fc([12])\.", r"blocks.\1.mlp.fc\2.", k): v for k, v in state.items()}


def fuse_split_qkv(state: dict[str, torch.Tensor], qv_biases: bool = False) -> dict[str, torch.Tensor]:
    """Split attention projections -> timm's fused ``qkv``: ``{q,k,v}_proj.{weight,bias}`` (the AdaptFormer
    reference layout, VideoMAE) concatenated; with ``qv_biases`` (VideoMAE, whose video ViT has a plain
    ``qkv.bias``) also ``q_bias``/``v_bias`` -> ``qkv.bias`` with a zero key bias. Image checkpoints keep them:
    timm's BEiT and EVA models have ``q_bias``/``v_bias`` parameters of their own. Used by both readers."""
    out = dict(state)
    split = re.compile(
        r"^(blocks\.\d+\.attn\.)(?:[qkv]_proj\.(?:weight|bias)|[qv]_bias)$"
        if qv_biases
        else r"^(blocks\.\d+\.attn\.)[qkv]_proj\.(?:weight|bias)$"
    )
    for prefix in sorted({m.group(1) for k in state if (m := split.match(k))}):
        for kind in ("weight", "bias"):
            parts = [out.pop(f"{prefix}{p}_proj.{kind}", None) for p in "qkv"]
            if all(part is not None for part in parts):
                out[f"{prefix}qkv.{kind}"] = torch.cat(parts, dim=0)
            elif any(part is not None for part in parts):
                raise AdaptFormerError(f"checkpoint has only some of {prefix}{{q,k,v}}_proj.{kind}")
        if not qv_biases:
            continue
        q_bias, v_bias = out.pop(f"{prefix}q_bias", None), out.pop(f"{prefix}v_bias", None)
        if q_bias is not None and v_bias is not None:
            out[f"{prefix}qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    return out


def drop_mismatched_head(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without a classifier the model cannot take (another class count, or none): a head for other
    classes is of no use to a new task, and everything else is then loaded strictly."""
    return {k: v for k, v in state.items() if not (k.startswith("head.") and (k not in own or own[k].shape != v.shape))}
