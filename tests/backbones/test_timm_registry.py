"""This library's backbones in timm's registry: timm.create_model builds them, and loads weights through the
converters as timm filter functions (offline here: the weights come from local files given to timm)."""

import pytest
import timm
import torch

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.backbones.embedded import CIFAR10_MEAN

TINY = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=16, num_frames=4)


def test_video_vits_are_timm_models_and_load_hugging_face_weights_through_the_filter(tmp_path):
    from test_video import hf_videomae

    hf, folder = hf_videomae(tmp_path)
    overlay = dict(file=str(folder / "model.safetensors"))
    model = timm.create_model("videomae_base_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay, **TINY)
    ours = adaptformer.create_backbone("videomae_base_patch16_224", checkpoint=folder, **TINY)
    for key, value in ours.state_dict().items():
        if not key.startswith("fc_norm."):
            assert torch.equal(model.state_dict()[key], value), key
    assert model.patch_embed.num_frames == 4 and model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    assert timm.is_model("videomae_small_patch16_224") and "videomae_large_patch16_224" in timm.list_models("videomae*")


def test_a_checkpoint_of_another_shape_is_refused_in_one_line_by_the_filter(tmp_path):
    from test_video import hf_videomae

    _, folder = hf_videomae(tmp_path)
    overlay = dict(file=str(folder / "model.safetensors"))
    wider = {**TINY, "embed_dim": 64}
    with pytest.raises(AdaptFormerError, match=r"does not fit the model .*check the width"):
        timm.create_model("videomae_base_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay, **wider)


def test_the_packaged_backbone_is_a_timm_model_with_its_own_preprocessing():
    model = timm.create_model("vit_tiny_patch4_32.adaptformer_cifar10", pretrained=True)
    packaged = adaptformer.create_backbone("adaptformer/vit-tiny-cifar10", num_classes=10)
    theirs, ours = model.state_dict(), packaged.state_dict()
    assert set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert model.pretrained_cfg["mean"] == CIFAR10_MEAN and model.num_classes == 10
    small = timm.create_model("vit_tiny_patch4_32.adaptformer_cifar10", pretrained=True, img_size=16, num_classes=3)
    assert small.pos_embed.shape[1] == 1 + 4 * 4  # resampled by timm's ViT filter
    assert adaptformer.create_backbone("adaptformer/vit-tiny-cifar10").pretrained_cfg["architecture"] == (
        "adaptformer/vit-tiny-cifar10"
    )
