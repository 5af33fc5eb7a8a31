"""Conformance of the timm families beyond VisionTransformer (tiny configurations, random weights): every
supported (family, method) pair starts equal to the pretrained model, trains only the task's tensors, matches
each task alone in a mixed batch and round-trips through a task file; the unsupported pairs are refused in one
line before any work."""

import pytest
import timm
import torch

import adaptformer
from adaptformer import AdaptFormerError

FAMILIES = {
    "deit_tiny_distilled_patch16_224": {},  # two prefix tokens, pooled as the mean of cls and dist
    "beit_base_patch16_224": {},  # relative position bias, separate q/v biases, mean pooling with fc_norm
    "vit_relpos_small_patch16_224": {},  # relative position bias, mean pooling
    "eva02_tiny_patch14_224": {"img_size": 28},  # rotary position embedding, separate q/v biases
}
METHODS = ["adaptformer", "linear", "lora", "bitfit"]  # zero-initialised: the adapted model starts as the backbone
PROMPTS_REFUSED = {"beit_base_patch16_224", "vit_relpos_small_patch16_224"}


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    kwargs = {"img_size": 32, "patch_size": 8, **FAMILIES[name]}
    if "eva" not in name:
        kwargs.update(embed_dim=32, num_heads=2)
    return timm.create_model(name, pretrained=False, num_classes=0, depth=2, **kwargs).eval()


def inputs(name: str) -> torch.Tensor:
    size = FAMILIES[name].get("img_size", 32)
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))


def plain_features(backbone, x):
    backbone.fc_norm = torch.nn.Identity()  # each task trains its own copy of fc_norm
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("method", METHODS)
def test_a_zero_initialised_task_leaves_the_features_unchanged_and_trains_only_itself(name, method):
    model = adaptformer.adapt(make(name), method, num_classes=3)
    x = inputs(name)
    with torch.no_grad():
        assert torch.allclose(model.eval().pooled_features(x), plain_features(make(name), x), atol=1e-5)
    model.train()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2])).backward()
    task = {id(p) for p in model.tasks["default"].parameters()}
    assert all(p.grad is None for p in model.backbone.parameters() if id(p) not in task)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.tasks["default"].parameters())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_mixed_batches_equal_each_task_alone_and_task_files_round_trip(name, tmp_path):
    model = adaptformer.adapt(make(name), "adaptformer", num_classes=3, task="a", bottleneck=4).eval()
    model.add_task("b", "lora", classes=4)
    model.add_task("c", "linear", classes=2)
    if name not in PROMPTS_REFUSED:
        model.add_task("d", "vpt", classes=2, vpt_tokens=2)
    for parameter in model.tasks.parameters():
        parameter.data.normal_(0, 0.05)
    names = list(model.tasks)
    x = inputs(name)[:1].expand(len(names), -1, -1, -1).contiguous()
    with torch.no_grad():
        rows = model(x, tasks=names)
        for row, task in zip(rows, names, strict=True):
            assert torch.allclose(row, model(x[:1], task=task)[0], atol=1e-5)
        adaptformer.save_task(model, tmp_path / "b.safetensors", task="b")
        fresh = adaptformer.apply_task(make(name), tmp_path / "b.safetensors").eval()
        assert torch.allclose(fresh(x[:1]), model(x[:1], task="b"), atol=1e-6)


@pytest.mark.parametrize("name", sorted(PROMPTS_REFUSED))
@pytest.mark.parametrize("mode", ["deep", "shallow", "kv"])
def test_prompts_are_refused_where_a_relative_position_bias_has_no_entry_for_them(name, mode):
    with pytest.raises(AdaptFormerError) as error:
        adaptformer.adapt(make(name), "vpt", num_classes=3, vpt_mode=mode)
    message = str(error.value)
    assert "relative position bias" in message and "use adaptformer, lora" in message and "\n" not in message


def test_hierarchical_models_are_refused_naming_the_class():
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, embed_dim=24, depths=(1, 1), num_heads=(1, 2)
    )
    with pytest.raises(AdaptFormerError, match=r"^SwinTransformer: not supported: a hierarchical model"):
        adaptformer.adapt(swin, "adaptformer", num_classes=3)
