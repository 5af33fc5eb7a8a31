"""Conformance of the timm families beyond VisionTransformer (tiny configurations, random weights): every
supported (family, method) pair starts equal to the pretrained model, trains only the task's tensors, matches
each task alone in a mixed batch and round-trips through a task file; the adapter's equation holds against a
hand-written reference of each family's block; the unsupported pairs are refused in one line before any work."""

import pytest
import timm
import torch

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.tasks.format import read_task_file

SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "num_heads": 2, "depth": 2}
SWIN = {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2)}
#: timm name -> (create_model keywords, input side)
FAMILIES = {
    "deit_tiny_distilled_patch16_224": (SMALL, 32),  # two prefix tokens, pooled as the mean of cls and dist
    "beit_base_patch16_224": (SMALL, 32),  # relative position bias, separate q/v biases, mean pooling
    "vit_relpos_small_patch16_224": (SMALL, 32),  # relative position bias, mean pooling
    "eva02_tiny_patch14_224": ({"img_size": 28, "depth": 2}, 28),  # rotary position embedding
    "swin_tiny_patch4_window7_224": (SWIN, 32),  # stages of 16 and 32 channels, (shifted) windows
    "swinv2_tiny_window8_256": (SWIN, 32),  # res-post-norm blocks: x' enters the MLP directly
    "cait_xxs24_224": ({**SMALL, "depth_token_only": 1}, 32),  # one DropPath ends both branches
    "xcit_nano_12_p16_224": ({**SMALL, "cls_attn_layers": 1}, 32),  # cross-covariance attention, LPI
    "samvit_base_patch16": (
        {**SMALL, "window_size": 2, "global_attn_indexes": (1,), "neck_chans": 16},
        32,
    ),  # windowed (H, W) tokens, a convolutional neck is pooled
    "hiera_tiny_224": ({"img_size": 64, "embed_dim": 16, "num_heads": 1, "stages": (1, 1, 1, 1)}, 64),
    "naflexvit_base_patch16_gap": (SMALL, 32),
    "pvt_v2_b0": ({"embed_dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}, 32),
    "mvitv2_tiny": ({"depths": (1, 2), "embed_dim": 16, "num_heads": 1}, 64),  # pooling attention, stages
}
#: families whose blocks have no attention input projection to hook (none of these: PVT v2's q and kv are found)
NO_QKV: set[str] = set()
PROMPTS = {"deit_tiny_distilled_patch16_224", "eva02_tiny_patch14_224", "naflexvit_base_patch16_gap"}
HIERARCHICAL = {
    "swin_tiny_patch4_window7_224",
    "swinv2_tiny_window8_256",
    "hiera_tiny_224",
    "pvt_v2_b0",
    "mvitv2_tiny",
}
METHODS = ["adaptformer", "linear", "lora", "bitfit"]  # zero-initialised: they start as the backbone


def pairs():
    for name in FAMILIES:
        for method in METHODS:
            if not (method == "lora" and name in NO_QKV):
                yield name, method


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    if name == "mvitv2_tiny":  # timm builds MViTv2 from a config object, not keywords
        from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

        return MultiScaleVit(MultiScaleVitCfg(**FAMILIES[name][0]), img_size=(64, 64), num_classes=0).eval()
    return timm.create_model(name, pretrained=False, num_classes=0, **FAMILIES[name][0]).eval()


def inputs(name: str, count: int = 3) -> torch.Tensor:
    size = FAMILIES[name][1]
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))


def plain_features(backbone, x):
    if getattr(backbone, "fc_norm", None) is not None:
        backbone.fc_norm = torch.nn.Identity()  # each task trains its own copy of fc_norm
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("name, method", list(pairs()))
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
def test_full_fine_tuning_trains_the_backbone(name):
    model = adaptformer.adapt(make(name), "full", num_classes=3).train()
    torch.nn.functional.cross_entropy(model(inputs(name)), torch.tensor([0, 1, 2])).backward()
    assert sum(p.grad is not None for p in model.backbone.parameters()) > len(list(model.backbone.parameters())) // 2


@pytest.mark.parametrize("name", list(FAMILIES))
def test_mixed_batches_equal_each_task_alone_and_task_files_round_trip(name, tmp_path):
    model = adaptformer.adapt(make(name), "adaptformer", num_classes=3, task="a", bottleneck=4).eval()
    model.add_task("b", "bitfit" if name in NO_QKV else "lora", classes=4)
    model.add_task("c", "linear", classes=2)
    if name not in NO_QKV:
        model.add_task("s", "ssf", classes=3)
    model.add_task("e", "adaptformer", classes=2, bottleneck=2, placement="sequential")
    if name in PROMPTS:
        model.add_task("d", "vpt", classes=2, vpt_tokens=2)
    for parameter in model.tasks.parameters():
        parameter.data.normal_(0, 0.05)
    names = list(model.tasks)
    x = inputs(name, 1).expand(len(names), -1, -1, -1).contiguous()
    with torch.no_grad():
        rows = model(x, tasks=names)
        for row, task in zip(rows, names, strict=True):
            assert torch.allclose(row, model(x[:1], task=task)[0], atol=1e-5), task
        for task in ("a", "b"):
            adaptformer.save_task(model, tmp_path / f"{task}.safetensors", task=task)
            fresh = adaptformer.apply_task(make(name), tmp_path / f"{task}.safetensors").eval()
            assert torch.allclose(fresh(x[:1]), model(x[:1], task=task), atol=1e-6)


def _layer_scale(block):
    return getattr(block, "ls2", None) or torch.nn.Identity()


def _reference_branch(name: str, block, x_prime: torch.Tensor) -> torch.Tensor:
    """m, the MLP branch of ``block`` at x', written out from the family's own equations."""
    if name.startswith("swinv2"):  # res-post-norm: y = x' + norm2(mlp(x'))
        return block.norm2(block.mlp(x_prime))
    if name.startswith("cait"):  # y = x' + gamma_2 * mlp(norm2(x'))
        return block.gamma_2 * block.mlp(block.norm2(x_prime))
    if name.startswith("xcit"):
        return block.gamma2 * block.mlp(block.norm2(x_prime))
    if name.startswith("pvt"):
        return block.mlp(block.norm2(x_prime), *block.mlp_extra_args)
    return _layer_scale(block)(block.mlp(block.norm2(x_prime)))  # timm's pre-norm block (Swin: ls2 is absent)


@pytest.mark.parametrize("name", sorted(HIERARCHICAL | {"cait_xxs24_224", "xcit_nano_12_p16_224"}))
@pytest.mark.parametrize("placement", ["parallel", "sequential"])
def test_each_block_computes_the_adapter_equation_of_its_family(name, placement):
    """y = x' + m + s·Up(ReLU(Down(x'))) (parallel) or x' + m + s·Up(ReLU(Down(m))) (sequential), with x'
    and m read off each block by hand (forward pre-hooks record the x' the block computed)."""
    torch.manual_seed(3)
    model = adaptformer.adapt(make(name), "adaptformer", num_classes=3, bottleneck=4, placement=placement).eval()
    for parameter in model.task.parameters():
        parameter.data.normal_(0, 0.1)
    seen: dict[int, torch.Tensor] = {}

    def record(index):
        def hook(module, args):
            seen[index] = args[0]

        return hook

    for index, block in enumerate(model.blocks):
        block.mlp.register_forward_pre_hook(lambda m, args, b=block: setattr(b, "mlp_extra_args", args[1:]))
        model.anatomy.parts[index].residual_at.register_forward_pre_hook(record(index))
        block.register_forward_hook(lambda m, args, out, i=index: seen.__setitem__(("y", i), out))
    with torch.no_grad():
        model.pooled_features(inputs(name, 2))
        for index, block in enumerate(model.blocks):
            x_prime = seen[index]  # the input of norm2 (Swin V2: of the MLP) is x'
            m = _reference_branch(name, block, x_prime)
            adapter = model.task.adapter(index)
            a = adapter(x_prime if placement == "parallel" else m)
            y = seen[("y", index)]
            y = y[0] if isinstance(y, tuple) else y  # MViTv2's blocks also return their token grid
            assert torch.allclose(y, (x_prime + m + a).reshape(y.shape), atol=1e-5), (name, index)
            assert adapter.dim == x_prime.shape[-1] == model.backbone_spec().width(index)


def test_swin_adapters_follow_the_width_of_each_stage_and_params_reports_them():
    model = adaptformer.adapt(make("swin_tiny_patch4_window7_224"), "adaptformer", num_classes=3, bottleneck=4)
    assert [(s.name, s.width, list(s.blocks)) for s in model.stages()] == [
        ("stage 1", 16, [0, 1]),
        ("stage 2", 32, [2, 3]),
    ]
    assert [model.task.adapter(i).dim for i in range(model.depth)] == [16, 16, 32, 32]
    per_stage = model.parameters_per_stage()
    # Down (w x 4 + 4) and Up (4 x w + w) per block
    assert per_stage == {"stage 1": 2 * (16 * 4 + 4 + 4 * 16 + 16), "stage 2": 2 * (32 * 4 + 4 + 4 * 32 + 32)}
    assert model.head[-1].in_features == 32  # the last stage's width, not embed_dim


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - PROMPTS))
@pytest.mark.parametrize("mode", ["deep", "shallow", "kv"])
def test_prompts_are_refused_where_the_attention_has_no_place_for_them(name, mode):
    backbone = make(name)
    with pytest.raises(AdaptFormerError) as error:
        adaptformer.adapt(backbone, "vpt", num_classes=3, vpt_mode=mode)
    message = str(error.value)
    assert message.startswith(f"method vpt: {type(backbone).__name__}: its ")
    hosted = "use adaptformer or bitfit" if name in NO_QKV else "use adaptformer, lora, bitfit or ssf"
    assert message.endswith(hosted), message  # what this backbone can host instead
    assert "\n" not in message
    assert not any(hook for block in backbone.modules() for hook in block._forward_hooks.values())  # no residue


def test_lora_on_a_family_without_an_attention_is_refused_naming_the_site():
    backbone = timm.create_model("convnext_atto", pretrained=False, conv_mlp=False)
    with pytest.raises(
        AdaptFormerError, match=r"^method lora: the backbone's blocks have no hookable qkv \(.*fc1, fc2"
    ):
        adaptformer.adapt(backbone, "lora", num_classes=3)


def test_lora_on_pvt_v2_updates_its_separate_query_and_key_value_projections():
    model = adaptformer.adapt(make("pvt_v2_b0"), "lora", num_classes=3, lora_rank=2)
    assert set(model.task.blocks["0"]) == {"q", "kv"}


def test_an_mvit_whose_mlp_widens_the_tokens_takes_a_widening_adapter_beside_its_mlp():
    """MViTv2 built with expand_attn=False: the first block of a stage widens in its MLP, behind a projected
    shortcut, so y = proj(x_norm) + m has no residual x' of m's width: the adapter reads the MLP's input and maps
    it to the MLP's output width."""
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    config = MultiScaleVitCfg(depths=(1, 1), embed_dim=16, num_heads=1, expand_attn=False)
    torch.manual_seed(0)
    mvit = MultiScaleVit(config, img_size=(64, 64), num_classes=0).eval()
    x = inputs("mvitv2_tiny")
    with torch.no_grad():
        plain = mvit.forward_features(x)
    model = adaptformer.adapt(mvit, "adaptformer", num_classes=3, bottleneck=4).eval()
    kinds = [p.adapter_input for p in model.anatomy.parts]
    assert sorted(kinds) == ["mlp_input", "residual"]
    widening = model.task.adapter(kinds.index("mlp_input"))
    assert widening.dim < widening.out_dim
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x)[0], plain[0])
        widening.up_proj.weight.normal_()
        assert not torch.allclose(model.forward_features(x)[0], plain[0], atol=1e-3)


def test_a_task_file_records_the_family_class_and_is_refused_on_another(tmp_path):
    model = adaptformer.adapt(make("swin_tiny_patch4_window7_224"), "adaptformer", num_classes=3, bottleneck=4)
    path = adaptformer.save_task(model, tmp_path / "swin.safetensors")
    header, _ = read_task_file(path)
    assert header.meta["backbone"]["class"] == "SwinTransformer"
    with pytest.raises(
        AdaptFormerError, match=r"made for a SwinTransformer backbone .* the model is a SwinTransformerV2"
    ):
        adaptformer.apply_task(make("swinv2_tiny_window8_256"), path)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_adapted_model_compiles_in_one_graph_where_the_family_does(name):
    """Every family here compiles with no graph break on its own (timm); the hooks and the router add none."""
    torch._dynamo.reset()
    model = adaptformer.adapt(make(name), "adaptformer", num_classes=3, bottleneck=4).eval()
    model.add_task("b", "bitfit", classes=2, activate=False)
    explanation = torch._dynamo.explain(model)(inputs(name, 2))
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
