"""VPT's kv mode (prefix tuning): learned keys and values in each chosen block's attention, checked against the
attention equation computed by hand from the block's own weights."""

import pytest
import torch
import torch.nn.functional as F

import adaptformer
from adaptformer import AdaptFormerError
from conftest import tiny_hf_vit, tiny_vit


def randomized_kv_model(depth=2, tokens=3, **options):
    model = adaptformer.adapt(tiny_vit(depth=depth), "vpt", vpt_mode="kv", vpt_tokens=tokens, **options).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prompt in [*model.task.key_prompts, *model.task.value_prompts]:
            prompt.copy_(torch.randn(prompt.shape, generator=generator))
    return model


def block_with_prefix(block, x, keys, values):
    """timm's pre-norm block, written out: x' = x + proj(softmax(q [P_k; K]^T / sqrt(d)) [P_v; V]), then the MLP."""
    heads = block.attn.num_heads
    batch, length, _ = x.shape
    q, k, v = block.attn.qkv(block.norm1(x)).chunk(3, dim=-1)
    k = torch.cat([keys.expand(batch, -1, -1), k], dim=1)
    v = torch.cat([values.expand(batch, -1, -1), v], dim=1)
    split = lambda t: t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = F.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(batch, length, -1)
    x = x + block.attn.proj(attended)
    return x + block.mlp(block.norm2(x))


def test_kv_prefix_matches_the_attention_equation(images):
    model = randomized_kv_model(depth=2, tokens=3, layers=[1])  # block 0 untouched, block 1 prefixed
    backbone = tiny_vit(depth=2)  # the same weights, without the adapted model's hooks
    with torch.no_grad():
        x = backbone.norm_pre(backbone._pos_embed(backbone.patch_embed(images)))
        x = without_prefix(backbone.blocks[0], x)
        expected = backbone.norm(
            block_with_prefix(backbone.blocks[1], x, model.task.key_prompts[0], model.task.value_prompts[0])
        )
        torch.testing.assert_close(model.forward_features(images), expected, rtol=1e-5, atol=1e-5)


def without_prefix(block, x):
    return block_with_prefix(block, x, x.new_zeros(1, 0, x.shape[-1]), x.new_zeros(1, 0, x.shape[-1]))


def test_prompts_are_never_queries_and_the_token_count_is_kept(images):
    model = randomized_kv_model(depth=2, tokens=2)
    lengths = []
    model.blocks[0].mlp.register_forward_hook(lambda m, args, out: lengths.append(out.shape[1]))
    tokens = model.forward_features(images)
    assert tokens.shape == (4, 17, 32) and lengths == [2 + 17]  # two prefix slots ride through the block, then go
    # the placeholder slots' content does not matter: change it and every kept output is the same
    with torch.no_grad():
        model.task.placeholder.normal_()
        torch.testing.assert_close(model.forward_features(images), tokens, rtol=1e-5, atol=1e-5)


def test_parameter_accounting_and_gradients(images):
    model = randomized_kv_model(depth=2, tokens=3)
    report = model.parameter_report()
    assert report.prompts == 2 * 2 * 3 * 32  # blocks x (keys + values) x tokens x key width
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        *(f"tasks.default.{kind}_prompts.{i}" for kind in ("key", "value") for i in range(2)),
        "tasks.default.head.1.weight",
        "tasks.default.head.1.bias",
    }
    model.train()
    model(images).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.task.key_prompts)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.task.value_prompts)
    assert model.backbone.blocks[0].attn.qkv.weight.grad is None


def test_kv_differs_from_deep_prompts_and_needs_a_fused_qkv(images):
    deep = adaptformer.adapt(tiny_vit(), "vpt", vpt_tokens=3)
    kv = adaptformer.adapt(tiny_vit(), "vpt", vpt_tokens=3, vpt_mode="kv")
    assert kv.parameter_report().prompts == 2 * deep.parameter_report().prompts  # keys and values: 2·N·A per block
    with pytest.raises(AdaptFormerError, match="vpt_mode kv: needs timm attention blocks"):
        adaptformer.adapt(tiny_hf_vit(), "vpt", num_classes=3, vpt_mode="kv")
