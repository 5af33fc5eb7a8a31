"""Video ViTs: timm blocks over tubelets, every checkpoint layout users have, inflation of image ViTs."""

import argparse
import copy
import json

import pytest
import torch

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.backbones.video import VideoViT, sinusoid_table
from adaptformer.cli import main
from conftest import tiny_videomae_config

NAME = "videomae_base_patch16_224"
TINY = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=16, num_frames=4)


def clips(n=2, seed=0):
    return torch.randn(n, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def hf_videomae(tmp_path, seed=0):
    """A tiny Hugging Face VideoMAEModel saved as save_pretrained writes it (config.json + model.safetensors)."""
    from transformers import VideoMAEModel

    torch.manual_seed(seed)
    config = tiny_videomae_config(intermediate_size=128, qkv_bias=True, use_mean_pooling=True, layer_norm_eps=1e-6)
    model = VideoMAEModel(config).eval()
    with torch.no_grad():  # HF initialises the q/v biases to zero: make them count
        for layer in model.encoder.layer:
            layer.attention.attention.q_bias.normal_()
            layer.attention.attention.v_bias.normal_()
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def test_matches_huggingface_videomae_exactly(tmp_path):
    hf, folder = hf_videomae(tmp_path)
    ours = adaptformer.create_backbone(NAME, checkpoint=folder, **TINY).eval()
    x = clips()
    with torch.no_grad():
        expected = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state  # HF takes (B, T, C, H, W)
        torch.testing.assert_close(ours.forward_features(x), expected, rtol=1e-5, atol=1e-5)
    q = hf.encoder.layer[0].attention.attention.q_bias
    assert torch.equal(
        ours.blocks[0].attn.qkv.bias,
        torch.cat([q, torch.zeros_like(q), hf.encoder.layer[0].attention.attention.v_bias]),
    )


def official_layout(model, pretraining=True):
    """The state dict of an official VideoMAE checkpoint (FORMATS of MCG-NJU/VideoMAE), from our weights."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("attn.qkv.bias"):
            q, _, v = value.chunk(3)
            state[key.replace("qkv.bias", "q_bias")], state[key.replace("qkv.bias", "v_bias")] = q, v
        elif not key.startswith(("fc_norm.", "head.")) or not pretraining:
            state[key] = value
    if not pretraining:
        return state
    state = {f"encoder.{k}": v for k, v in state.items()}
    state.update(
        {
            "encoder.norm.weight": torch.ones(32),
            "encoder.norm.bias": torch.zeros(32),
            "mask_token": torch.zeros(1, 1, 16),
            "encoder_to_decoder.weight": torch.randn(16, 32),
            "decoder.blocks.0.attn.qkv.weight": torch.randn(48, 16),
            "decoder.head.weight": torch.randn(1536, 16),
        }
    )
    return state


def test_official_pretraining_checkpoint_with_decoder_and_pickled_args(tmp_path):
    source = adaptformer.create_backbone(NAME, pretrained=False, **TINY)
    torch.save(
        {"model": official_layout(source), "epoch": 799, "args": argparse.Namespace(lr=1.5e-4)},
        tmp_path / "pretrain.pth",
    )
    loaded = adaptformer.create_backbone(NAME, checkpoint=tmp_path / "pretrain.pth", **TINY)
    for key, value in source.state_dict().items():
        if not key.startswith(("fc_norm.", "head.")):
            assert torch.equal(loaded.state_dict()[key], value), key


def test_official_finetuned_checkpoint_under_module_keeps_its_head(tmp_path):
    source = adaptformer.create_backbone(NAME, pretrained=False, num_classes=174, **TINY)
    torch.save({"module": official_layout(source, pretraining=False)}, tmp_path / "ssv2_finetuned.pth")
    loaded = adaptformer.create_backbone(NAME, checkpoint=tmp_path / "ssv2_finetuned.pth", num_classes=174, **TINY)
    assert torch.equal(loaded.head.weight, source.head.weight) and torch.equal(
        loaded.fc_norm.weight, source.fc_norm.weight
    )


def test_adaptformer_converted_layout(tmp_path):
    source = adaptformer.create_backbone(NAME, pretrained=False, **TINY)
    state = {}
    for key, value in official_layout(source).items():
        if key.endswith("attn.qkv.weight"):
            for part, chunk in zip("qkv", value.chunk(3), strict=True):
                state[key.replace("qkv", f"{part}_proj")] = chunk
        else:
            state[key.replace(".mlp.fc", ".fc")] = value
    torch.save({"model": state}, tmp_path / "pretrain_vit_b_new.pth")
    loaded = adaptformer.create_backbone(NAME, checkpoint=tmp_path / "pretrain_vit_b_new.pth", **TINY)
    assert torch.equal(loaded.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert torch.equal(loaded.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_wrong_width_or_tubelet_is_one_line(tmp_path):
    source = adaptformer.create_backbone(NAME, pretrained=False, **TINY)
    torch.save({"model": official_layout(source)}, tmp_path / "pretrain.pth")
    with pytest.raises(AdaptFormerError, match="does not fit the model.*tubelet"):
        adaptformer.create_backbone(NAME, checkpoint=tmp_path / "pretrain.pth", **{**TINY, "tubelet_size": 4})
    with pytest.raises(AdaptFormerError, match="does not fit the model"):
        adaptformer.create_backbone(
            NAME, checkpoint=tmp_path / "pretrain.pth", **{**TINY, "embed_dim": 64, "num_heads": 4}
        )
    with pytest.raises(AdaptFormerError, match="expected clips of shape"):
        source(torch.randn(1, 3, 32, 32))


def test_every_method_adapts_a_video_vit(tmp_path):
    backbone = adaptformer.create_backbone(NAME, pretrained=False, **TINY).eval()
    x = clips()
    reference = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
    for method in ("adaptformer", "linear", "vpt", "full"):
        model = adaptformer.adapt(copy.deepcopy(backbone), method, num_classes=5).eval()
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        if method != "vpt":  # zero-initialised methods start exactly at the pretrained model
            assert torch.equal(features, reference), method
        assert model(x).shape == (2, 5)
    model = adaptformer.adapt(copy.deepcopy(backbone), "adaptformer", num_classes=5, bottleneck=8)
    assert set(model.task_state_dict()) >= {"fc_norm.weight", "blocks.0.adaptmlp.down_proj.weight", "head.1.weight"}
    assert model.input_spec().frames == 4 and model.input_spec().input_ndim == 5


def test_params_for_video_names_need_no_weights(capsys):
    args = [
        "params",
        "--model",
        NAME,
        "--method",
        "adaptformer",
        "--bottleneck",
        "64",
        "--num-classes",
        "174",
        "--json",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["adapters"] == 1_189_632 and report["head"] == 768 * 174 + 174 and report["norms"] == 2 * 768


def test_sinusoid_table_is_videomae_s():
    table = sinusoid_table(5, 8)[0]
    j = torch.arange(8)
    angles = torch.arange(5)[:, None] / torch.pow(10000, 2 * (j // 2) / 8)
    expected = torch.where(j % 2 == 0, torch.sin(angles), torch.cos(angles))
    torch.testing.assert_close(table, expected.float())


def test_embedded_image_backbone_inflates_to_video():
    image = adaptformer.create_backbone("adaptformer/vit-tiny-cifar10").eval()
    video = adaptformer.create_backbone("adaptformer/vit-tiny-cifar10", num_frames=4).eval()
    assert isinstance(video, VideoViT) and video.patch_embed.grid_size == (2, 8, 8)
    frame = torch.randn(1, 3, 32, 32)
    static = frame[:, :, None].repeat(1, 1, 4, 1, 1)
    with torch.no_grad():  # a static clip embeds exactly as the image did, at every time step
        tokens = video.patch_embed(static).view(1, 2, 64, -1)
        torch.testing.assert_close(tokens[:, 0], image.patch_embed(frame), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tokens[:, 1], image.patch_embed(frame), rtol=1e-5, atol=1e-5)
    spatial = image.pos_embed[:, 1:]
    assert torch.equal(video.pos_embed[:, :64], spatial) and torch.equal(video.pos_embed[:, 64:], spatial)
    assert torch.equal(video.fc_norm.weight, image.norm.weight)
    assert torch.equal(video.blocks[3].mlp.fc1.weight, image.blocks[3].mlp.fc1.weight)
    adapted = adaptformer.create_model(
        "adaptformer/vit-tiny-cifar10", "adaptformer", num_classes=3, timm_kwargs={"num_frames": 4}
    )
    assert adapted(static).shape == (1, 3)


@pytest.mark.parametrize("family", ["timm", "hf"])
def test_images_on_a_video_backbone_are_static_clips(tmp_path, family):
    """(B, C, H, W) on a video backbone = the image in every frame, for one task and for a mixed batch."""
    if family == "timm":
        backbone = adaptformer.create_backbone(NAME, pretrained=False, **TINY)
    else:
        backbone = hf_videomae(tmp_path)[0]
    model = adaptformer.adapt(backbone, "adaptformer", num_classes=3, bottleneck=4).eval()
    if family == "timm":
        model.add_task("other", "vpt", classes=2, vpt_tokens=2)
    else:  # HF layers take no attention mask: a mixed batch of prompt tasks is refused there (routing.py)
        model.add_task("other", "adaptformer", classes=2, bottleneck=2)
    for task in model.tasks.values():  # non-zero adapters, so the task's path is what is compared
        for p in task.parameters():
            torch.nn.init.normal_(p, std=0.1)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    static = images[:, :, None].repeat(1, 1, 4, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(images, task="default"), model(static, task="default"), atol=1e-6)
        mixed = model(images, tasks=["default", "other", "default"])
        alone = model(static, tasks=["default", "other", "default"])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(mixed, alone, strict=True))
    assert torch.allclose(mixed[1], model(static[1:2], task="other")[0], atol=1e-5)
