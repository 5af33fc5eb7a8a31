"""Video checkpoints into :class:`~adaptformer.backbones.video.VideoViT`'s (timm) key names, checked strictly.

Layouts read (all through the safe readers of ``checkpoints.py``):

* official VideoMAE pretraining checkpoints: ``{'model': {'encoder.*', 'decoder.*', 'encoder_to_decoder.*',
  'mask_token', ...}, 'args': Namespace}``: the encoder is kept, its final ``norm`` dropped (fine-tuning pools
  and uses a new ``fc_norm``, as VideoMAE does);
* official fine-tuned checkpoints (``model`` or ``module``): ``patch_embed.*``, ``blocks.N.*``, ``fc_norm.*``,
  ``head.*``;
* both store attention as a fused ``qkv.weight`` with ``q_bias`` and ``v_bias`` (no k bias): these become
  timm's ``qkv.bias = [q_bias, 0, v_bias]``;
* AdaptFormer's converted files (``attn.{q,k,v}_proj.weight``, ``fc1``/``fc2`` outside ``mlp``);
* Hugging Face ``transformers`` VideoMAE (``[videomae.]embeddings...``, ``[videomae.]encoder.layer.N...``), as a
  ``model.safetensors`` / ``pytorch_model.bin`` file or the folder ``save_pretrained`` writes.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import AdaptFormerError
from .checkpoints import drop_mismatched_head, fuse_split_qkv, read_state_dict

PRETRAINING_ONLY = re.compile(r"^(decoder\..*|decoder_.*|encoder_to_decoder\..*|mask_token|norm\.(weight|bias))$")
HF_FILES = ("model.safetensors", "pytorch_model.bin")
HF_LAYER = {
    "attention.output.dense": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def read_video_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A video checkpoint (file or Hugging Face folder) in VideoViT key names."""
    path = Path(path)
    if path.is_dir():
        found = next((path / name for name in HF_FILES if (path / name).is_file()), None)
        if found is None:
            raise AdaptFormerError(f"checkpoint {path}: a folder without {' or '.join(HF_FILES)}")
        path = found
    return to_video_vit(read_state_dict(path))


def to_video_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A VideoMAE state dict (official encoder or pretraining layout, or Hugging Face's) in this library's keys."""
    if any(re.match(r"^(videomae\.)?(encoder\.layer\.|embeddings\.patch_embeddings\.)", k) for k in state):
        return from_huggingface(state)
    if any(k.startswith("encoder.") for k in state):  # a pretraining checkpoint: keep the encoder
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    state = {k: v for k, v in state.items() if not PRETRAINING_ONLY.match(k)}
    state = {re.sub(r"^blocks\.(\d+)\.fc([12])\.", r"blocks.\1.mlp.fc\2.", k): v for k, v in state.items()}
    return fuse_split_qkv(state, qv_biases=True)


def from_huggingface(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of ``VideoMAEModel`` (no prefix) or of the task models (``videomae.`` prefix)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("videomae.")
        if key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("fc_norm."):
            out[key] = value
        elif key.startswith("classifier."):
            out["head." + key.rsplit(".", 1)[1]] = value
        elif match := re.match(r"^encoder\.layer\.(\d+)\.(.+)$", key):
            index, rest = match.groups()
            out[f"blocks.{index}.{_hf_layer_key(rest)}"] = value
        # the pretraining decoder, encoder_to_decoder, mask_token and videomae.layernorm are not the encoder's
    return fuse_split_qkv(out, qv_biases=True)


def _hf_layer_key(rest: str) -> str:
    attention = re.match(r"^attention\.attention\.(query|key|value)\.weight$", rest)
    if attention:
        return f"attn.{attention.group(1)[0]}_proj.weight"
    if rest in ("attention.attention.q_bias", "attention.attention.v_bias"):
        return "attn." + rest.rsplit(".", 1)[1]
    for theirs, ours in HF_LAYER.items():
        if rest.startswith(theirs + "."):
            return ours + rest[len(theirs) :]
    return rest  # unknown: reported by the strict load


def load_video_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strict load of everything but the head (dropped when its class count differs) and fc_norm (new for
    pretraining checkpoints); wrong widths, tubelets or depths fail in one line."""
    model.load_state_dict(video_state_for(model, state, path), strict=False)


def video_state_for(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """``state`` (already in this library's keys) checked against ``model``: every backbone weight present with
    its shape, nothing unknown; the head kept only where it fits, a stored sinusoidal table dropped."""
    own = model.state_dict()
    state = drop_mismatched_head(state, own)
    if "pos_embed" in state and "pos_embed" not in own:
        state.pop("pos_embed")  # a stored sinusoidal table: ours is computed for the model's own frames
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise AdaptFormerError(
            f"checkpoint {path}: does not fit the model ({'; '.join(wrong[:2])}); check the width, depth, "
            "tubelet size and patch size"
        )
    missing = [k for k in own if k not in state and not k.startswith(("head.", "fc_norm."))]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise AdaptFormerError(
            f"checkpoint {path}: keys do not match the video model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return state


def video_filter_fn(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm-style ``pretrained_filter_fn``: a VideoMAE checkpoint (official or Hugging Face layout) -> this
    model's keys, checked (``video_state_for``), for ``timm.create_model(..., pretrained=True)``."""
    return video_state_for(model, to_video_vit(state), "the pretrained weights")
