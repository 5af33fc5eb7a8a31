"""VPT on rotary-position backbones (timm's Eva: EVA-02, RoPE ViTs): prompts are counted as the attention's prefix
tokens while they are in the sequence, so the rotary embedding rotates exactly the patch tokens, as it does for
the class token. Before, every mode failed inside timm ("The size of tensor a (6) must match ... (4)")."""

import pytest
import timm
import torch

import adaptformer


def tiny_eva(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, depth=2, num_classes=0)


@pytest.mark.parametrize("mode", ["deep", "shallow", "kv"])
def test_vpt_trains_on_a_rotary_backbone_and_leaves_it_as_it_was(mode):
    model = adaptformer.adapt(tiny_eva(), "vpt", num_classes=3, vpt_tokens=2, vpt_mode=mode)
    x = torch.randn(4, 3, 28, 28)
    plain = tiny_eva().eval()
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    prompts = [p for n, p in model.tasks["default"].named_parameters() if "prompts" in n or "embeddings" in n]
    assert prompts and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)
    assert all(block.attn.num_prefix_tokens == 1 for block in model.backbone.blocks)  # restored after each block
    model.remove_task("default")  # without a task the hooks pass through: the backbone computes what it did
    with torch.no_grad():
        assert torch.allclose(model.eval().forward_features(x), plain.forward_features(x), atol=1e-6)


def test_mixed_batches_on_a_rotary_backbone_equal_each_task_alone():
    model = adaptformer.adapt(tiny_eva(), "vpt", num_classes=3, vpt_tokens=2, task="deep").eval()
    model.add_task("kv", "vpt", classes=4, vpt_tokens=3, vpt_mode="kv")
    model.add_task("adapter", "adaptformer", classes=2, bottleneck=4)
    for parameter in model.tasks.parameters():  # non-zero adapters, so every task changes the features
        parameter.data.normal_(0, 0.05)
    x = torch.randn(4, 3, 28, 28)
    names = ["deep", "kv", "adapter", "deep"]
    with torch.no_grad():
        rows = model(x, tasks=names)
        alone = [model(x[i : i + 1], task=name)[0] for i, name in enumerate(names)]
    for row, single in zip(rows, alone, strict=True):
        assert torch.allclose(row, single, atol=1e-5)


@pytest.mark.parametrize("method, options", [("lora", {"lora_targets": "qkv"}), ("ssf", {})])
def test_qkv_hooks_fire_on_eva02_whose_attention_adds_separate_q_v_biases(method, options):
    """EVA-02 computes F.linear(x, qkv.weight, q/k/v bias), bypassing attn.qkv; the model switches it to timm's
    qkv_bias_separate mode, so what is trained on qkv reaches the output and gets gradients."""
    model = adaptformer.adapt(tiny_eva(), method, num_classes=3, **options)
    assert model.backbone.blocks[0].attn.q_bias is not None
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 28, 28)), torch.tensor([0, 1, 2, 0])).backward()
    on_qkv = {n: p for n, p in model.tasks["default"].named_parameters() if "qkv" in n}
    assert on_qkv and all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in on_qkv.items() if "lora_A" not in n)


def test_a_checkpointed_rotary_backbone_counts_the_prompts_again_when_it_recomputes_a_block():
    model = adaptformer.adapt(tiny_eva(), "vpt", num_classes=3, vpt_tokens=2)
    x, labels = torch.randn(3, 3, 28, 28), torch.tensor([0, 1, 2])
    grads = []
    for checkpointed in (False, True):
        model.set_grad_checkpointing(checkpointed)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model.train()(x), labels).backward()
        grads.append([p.grad.clone() for p in model.task.parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain, atol=1e-6, rtol=1e-5)
    assert grads[0][0].abs().sum() > 0
