"""The adapted timm ViT computes exactly the AdaptFormer equations (README, "How it works")."""

import copy

import pytest
import torch
import torch.nn.functional as F

import adaptformer
from adaptformer import AdaptFormerError
from conftest import features, tiny_vit


def reference_adapter(adapter, h):
    ln = adapter.adapter_layer_norm_before
    if adapter.config.layernorm == "in":
        h = F.layer_norm(h, (h.shape[-1],), ln.weight, ln.bias, ln.eps)
    h = F.relu(F.linear(h, adapter.down_proj.weight, adapter.down_proj.bias))
    out = F.linear(h, adapter.up_proj.weight, adapter.up_proj.bias) * adapter.scale
    if adapter.config.layernorm == "out":
        out = F.layer_norm(out, (out.shape[-1],), ln.weight, ln.bias, ln.eps)
    return out


def reference_block(block, x, adapter):
    """x' = x + Attn(LN1(x)); parallel: y = x' + MLP(LN2(x')) + a(x'); sequential: m = MLP(LN2(x')),
    y = x' + m + a(m)."""
    x_prime = x + block.attn(block.norm1(x))
    m = block.mlp(block.norm2(x_prime))
    if adapter is None:
        return x_prime + m
    if adapter.config.placement == "parallel":
        return x_prime + m + reference_adapter(adapter, x_prime)
    return x_prime + (m + reference_adapter(adapter, m))


def randomize_adapters(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adaptmlp." in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.5)


OPTIONS = [
    dict(placement="parallel"),
    dict(placement="sequential"),
    dict(placement="parallel", layernorm="in"),
    dict(placement="parallel", layernorm="out"),
    dict(placement="sequential", layernorm="in"),
    dict(placement="sequential", layernorm="out"),
    dict(placement="parallel", scale="learnable"),
    dict(placement="sequential", scale="learnable", layernorm="in"),
]


@pytest.mark.parametrize("options", OPTIONS)
def test_adapted_model_equals_reference_equations(options, images):
    model = adaptformer.adapt(
        tiny_vit().double(), "adaptformer", bottleneck=4, scale=options.pop("scale", 0.3), **options
    )
    randomize_adapters(model)
    model.eval()
    x = images.double()
    vit = model.backbone
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    expected = tokens
    for index, block in enumerate(vit.blocks):
        expected = reference_block(block, expected, model.task.adapter(index))
    expected = vit.norm(expected)
    actual = model.forward_features(x)
    assert (actual - expected).abs().max() < 1e-6
    assert (actual - tiny_vit().double().forward_features(x)).abs().max() > 1e-3  # the adapters do act


@pytest.mark.parametrize(
    "method, options",
    [
        ("adaptformer", dict(placement="parallel")),
        ("adaptformer", dict(placement="sequential")),
        ("adaptformer", dict(placement="parallel", layernorm="out", scale="learnable")),
        ("adaptformer", dict(placement="sequential", layernorm="in", init="kaiming_normal")),
        ("linear", {}),
        ("full", {}),
    ],
)
def test_zero_initialised_method_equals_frozen_backbone(method, options, images):
    backbone = tiny_vit()
    adapted = adaptformer.adapt(copy.deepcopy(backbone), method, **options).eval()
    assert torch.equal(features(adapted, images), features(backbone, images))


def test_vpt_prompts_change_features_but_keep_token_count(images):
    backbone = tiny_vit()
    for mode in ("deep", "shallow"):
        adapted = adaptformer.adapt(copy.deepcopy(backbone), "vpt", vpt_tokens=3, vpt_mode=mode).eval()
        tokens = adapted.forward_features(images)
        assert tokens.shape == backbone.forward_features(images).shape
        assert not torch.allclose(features(adapted, images), features(backbone, images))
        assert len(adapted.task.embeddings) == (2 if mode == "deep" else 1)
        assert adapted.task.embeddings[0].shape == (1, 3, 32)


def test_vpt_deep_prepends_before_and_drops_after_every_block(images):
    model = adaptformer.adapt(tiny_vit(), "vpt", vpt_tokens=2).eval()
    seen = []
    for block in model.blocks:
        block.attn.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    model(images)
    assert seen == [2 + 17, 2 + 17]  # 16 patches + class token, plus the prompts, at each block


def test_layer_subsets_place_adapters_only_where_asked():
    model = adaptformer.adapt(tiny_vit(depth=4), "adaptformer", layers="top:1")
    assert [i for i in range(4) if model.task.adapter(i) is not None] == [3]
    model = adaptformer.adapt(tiny_vit(depth=4), "adaptformer", layers=[0, 2])
    assert [i for i in range(4) if model.task.adapter(i) is not None] == [0, 2]


@pytest.mark.parametrize("width, depth, heads", [(48, 3, 3), (64, 1, 4)])
def test_any_width_and_depth(width, depth, heads):
    model = adaptformer.adapt(tiny_vit(embed_dim=width, depth=depth, num_heads=heads), bottleneck=8)
    assert model.task.adapter(0).down_proj.weight.shape == (8, width)
    assert len([n for n, _ in model.named_parameters() if n.endswith("adaptmlp.up_proj.weight")]) == depth


def test_layerscale_blocks_are_supported(images):
    backbone = tiny_vit(init_values=0.1)  # DeiT-III style LayerScale
    adapted = adaptformer.adapt(copy.deepcopy(backbone), "adaptformer").eval()
    assert torch.equal(features(adapted, images), features(backbone, images))


def test_deepcopy_rebinds_hooks_to_the_copied_adapters(images):
    model = adaptformer.adapt(tiny_vit(), "adaptformer").eval()
    clone = copy.deepcopy(model)
    randomize_adapters(clone)
    assert torch.equal(features(model, images), features(tiny_vit(), images))
    assert not torch.equal(features(clone, images), features(model, images))


def test_unsupported_models_fail_with_one_line_errors():
    with pytest.raises(AdaptFormerError, match=r"^Linear: not supported: it has no MLP block"):
        adaptformer.adapt(torch.nn.Linear(3, 3), num_classes=2)
    model = adaptformer.adapt(tiny_vit())
    with pytest.raises(AdaptFormerError, match="already adapted"):
        adaptformer.adapt(model)
    with pytest.raises(AdaptFormerError, match="method: expected one of adaptformer, "):
        adaptformer.adapt(tiny_vit(), "nosuchmethod")


def test_a_post_norm_block_takes_the_adapter_on_the_residual_that_enters_its_mlp():
    """timm's ResPostBlock: y = x' + drop_path2(norm2(mlp(x'))): x' is the MLP's own input (found, not declared)."""
    vit = tiny_vit(block_fn=__import__("timm").models.vision_transformer.ResPostBlock)
    model = adaptformer.adapt(vit, "adaptformer", num_classes=3, bottleneck=4)
    part = model.anatomy.parts[0]
    assert part.adapter_input == "residual"
    assert part.residual_at is vit.blocks[0].mlp and part.branch_at is vit.blocks[0].drop_path2


@pytest.mark.parametrize(
    "name, width, depth",
    [
        ("vit_tiny_patch16_224", 192, 12),
        ("vit_small_patch16_224", 384, 12),
        ("deit_small_patch16_224", 384, 12),
        ("deit3_small_patch16_224", 384, 12),  # LayerScale blocks
        ("vit_base_patch16_224.mae", 768, 12),
        ("vit_large_patch16_224", 1024, 24),
    ],
)
def test_timm_vit_family(name, width, depth):
    import timm

    model = adaptformer.adapt(timm.create_model(name, pretrained=False, num_classes=10), "adaptformer")
    report = adaptformer.parameter_report(model)
    assert report.adapters == depth * (2 * width * 64 + width + 64)
    assert report.head == width * 10 + 10
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 10)
