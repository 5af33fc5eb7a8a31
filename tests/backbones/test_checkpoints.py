"""Local checkpoint files in the layouts users have (docs/checkpoints.md) load fully, or fail clearly."""

import argparse

import pytest
import torch
from safetensors.torch import save_file

import adaptformer
from adaptformer import AdaptFormerError
from conftest import TINY, tiny_vit

NAME = "vit_tiny_patch16_224"


def pretrained_state():
    return tiny_vit(num_classes=10, seed=7).state_dict()


def assert_backbone_equals(model, state):
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("head."):
            assert torch.equal(own[key], value), key


def test_flat_safetensors(tmp_path):
    state = pretrained_state()
    save_file(state, str(tmp_path / "w.safetensors"))
    model = adaptformer.create_backbone(NAME, checkpoint=tmp_path / "w.safetensors", num_classes=3, **TINY)
    assert_backbone_equals(model, state)
    assert model.num_classes == 3


def test_mae_pretraining_checkpoint_with_decoder_and_pickled_args(tmp_path):
    state = pretrained_state()
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    mae = {
        **state,
        "mask_token": torch.zeros(1, 1, 16),
        "decoder_embed.weight": torch.randn(16, 32),
        "decoder_blocks.0.norm1.weight": torch.ones(16),
        "decoder_pred.weight": torch.randn(192, 16),
    }
    torch.save(
        {"model": mae, "optimizer": {}, "epoch": 3, "args": argparse.Namespace(lr=1.0)}, tmp_path / "checkpoint-3.pth"
    )
    model = adaptformer.create_backbone(NAME, checkpoint=tmp_path / "checkpoint-3.pth", num_classes=4, **TINY)
    assert_backbone_equals(model, state)


def test_reference_split_qkv_layout(tmp_path):
    state = pretrained_state()
    converted = {}
    for key, value in state.items():
        if ".attn.qkv." in key:
            for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                converted[key.replace("qkv", f"{part}_proj")] = chunk
        elif ".mlp.fc" in key:
            converted[key.replace("mlp.", "")] = value
        else:
            converted[key] = value
    torch.save({"model": converted}, tmp_path / "reference.pth")
    model = adaptformer.create_backbone(NAME, checkpoint=tmp_path / "reference.pth", num_classes=4, **TINY)
    assert_backbone_equals(model, state)


def test_wrong_names_are_refused_not_silently_ignored(tmp_path):
    state = {f"encoder.{k}": v for k, v in pretrained_state().items()}
    torch.save({"model": state}, tmp_path / "prefixed.pth")
    with pytest.raises(AdaptFormerError, match="does not provide"):
        adaptformer.create_backbone(NAME, checkpoint=tmp_path / "prefixed.pth", num_classes=4, **TINY)


def test_other_architecture_is_refused(tmp_path):
    save_file(tiny_vit(embed_dim=48, num_heads=3).state_dict(), str(tmp_path / "wide.safetensors"))
    with pytest.raises(AdaptFormerError, match="wide.safetensors"):
        adaptformer.create_backbone(NAME, checkpoint=tmp_path / "wide.safetensors", num_classes=4, **TINY)


def test_unreadable_files_fail_in_one_line(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(AdaptFormerError, match="junk.pth: cannot be read"):
        adaptformer.create_backbone(NAME, checkpoint=tmp_path / "junk.pth", **TINY)
    with pytest.raises(AdaptFormerError, match="no such file"):
        adaptformer.create_backbone(NAME, checkpoint=tmp_path / "absent.pth", **TINY)


def test_untrusted_pickles_are_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"model": {"w": torch.zeros(1)}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(AdaptFormerError, match="cannot be read"):
        adaptformer.create_backbone(NAME, checkpoint=tmp_path / "evil.pth", **TINY)


def test_unknown_model_name():
    with pytest.raises(AdaptFormerError, match="not a timm model"):
        adaptformer.create_backbone("vit_nonexistent_model", pretrained=False)


def test_create_model_builds_and_adapts_in_one_call(tmp_path):
    save_file(pretrained_state(), str(tmp_path / "w.safetensors"))
    model = adaptformer.create_model(
        NAME, "adaptformer", num_classes=6, checkpoint=tmp_path / "w.safetensors", timm_kwargs=TINY, bottleneck=8
    )
    assert model.task.adapter(0).down_proj.out_features == 8 and model.num_classes == 6


@pytest.mark.parametrize(
    "name, shape",
    [
        ("beit_base_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2, depth=2)),
        ("eva02_tiny_patch14_224", dict(img_size=28, depth=2)),
        (
            "swin_tiny_patch4_window7_224",
            dict(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2)),
        ),
    ],
)
def test_checkpoints_of_other_families_load_with_their_own_parameters(name, shape, tmp_path):
    """BEiT and EVA-02 keep separate q/v bias parameters (not fused into a qkv bias, as VideoMAE's are)."""
    import timm

    torch.manual_seed(5)
    source = timm.create_model(name, pretrained=False, num_classes=0, **shape)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_()  # every weight non-constant, so the loader's "all set" check sees each one
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    loaded = adaptformer.create_backbone(name, checkpoint=tmp_path / "weights.safetensors", num_classes=0, **shape)
    assert_backbone_equals(loaded, source.state_dict())
