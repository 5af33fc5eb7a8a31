"""Families no table names, adapted by their anatomy (``backbones/anatomy.py``), through the conformance checks the
declared families pass: tiny random configurations of different shapes (a ConvNeXt block whose tokens are
(B, C, H, W) around a channels-last MLP, a PoolFormer's 1x1-convolution MLP, a gated (GLU) MLP-Mixer, DaVit's
windowed blocks that hand back their tokens as a map, TinyViT, LeViT's Linear+BatchNorm MLP, a block whose layer
scale is a multiplication (no reachable residual: the adapter sits beside the MLP), and Hugging Face's AIMv2
(SwiGLU, RMSNorm), BEiT (intermediate + output) and DINOv2 with registers).

Each: zero-initialised adapters leave the features unchanged and train only the task; a non-zero one moves them;
mixed batches equal each task alone; task files round-trip (and a file whose recorded anatomy differs is refused);
checkpointed gradients equal plain ones; ``forward_intermediates`` equals the plain backbone's at zero init; the
adapted model compiles in one graph."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import GluMlp
from timm.models.convnext import ConvNeXt
from timm.models.metaformer import MetaFormer
from timm.models.mlp_mixer import MlpMixer
from timm.models.tiny_vit import TinyVit
from timm.models.vision_transformer import Block
from torch import nn

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.adapted.describe import hosted_methods
from adaptformer.backbones.plain import as_backbone
from adaptformer.tasks.format import read_task_file, write_task


class PlainViT(nn.Module):
    """A research model written from torch primitives, without timm's interface: its forward returns the tokens."""

    def __init__(self, dim: int = 32, depth: int = 2, patch: int = 8):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.layers = nn.ModuleList(PlainBlock(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class PlainBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.feed_forward(self.ln_2(x))


class ScaledBlock(Block):
    """A pre-norm block whose MLP branch is scaled by a multiplication, not a module: ``y = x' + γ·MLP(LN(x'))``.
    No module's output is the whole branch, so the adapter goes beside the MLP module itself."""

    def __init__(self, dim, *args, **kwargs):
        super().__init__(dim, *args, **kwargs)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x, attn_mask=None):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask)))
        return x + self.gamma * self.mlp(self.norm2(x))


def _hf(name: str):
    import transformers as t

    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32)
    if name == "aimv2":
        return t.Aimv2VisionModel(t.Aimv2VisionConfig(**vit, patch_size=8))
    if name == "beit":
        return t.BeitModel(t.BeitConfig(**vit, patch_size=8, use_mean_pooling=True))
    return t.Dinov2WithRegistersModel(t.Dinov2WithRegistersConfig(**vit, patch_size=8))


#: name -> (builder, input side, adapter input found)
FAMILIES = {
    "convnext": (lambda: ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), conv_mlp=False, num_classes=0), 64),
    "poolformer": (lambda: MetaFormer(depths=(1, 1), dims=(16, 32), num_classes=0, use_mlp_head=False), 64),
    "gmixer": (
        lambda: MlpMixer(
            num_blocks=2, embed_dim=32, img_size=32, patch_size=8, mlp_ratio=(1.0, 4.0), mlp_layer=GluMlp, num_classes=0
        ),
        32,
    ),
    "davit": (
        lambda: timm.create_model(
            "davit_tiny", pretrained=False, num_classes=0, depths=(1, 1), embed_dims=(16, 32), num_heads=(1, 2)
        ),
        64,
    ),
    "tinyvit": (
        lambda: TinyVit(embed_dims=(16, 32), depths=(1, 1), num_heads=(1, 2), window_sizes=(4, 4), num_classes=0),
        64,
    ),
    "levit": (
        lambda: timm.create_model(
            "levit_128s", pretrained=False, num_classes=0, img_size=64, embed_dim=(32, 48), key_dim=8,
            num_heads=(2, 2), depth=(1, 1),
        ),
        64,
    ),
    "scaled": (
        lambda: timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, embed_dim=32,
            depth=2, num_heads=2, block_fn=ScaledBlock,
        ),
        32,
    ),
    "plain-module": (lambda: PlainViT(), 32),
    "hf-aimv2": (lambda: _hf("aimv2"), 32),
    "hf-beit": (lambda: _hf("beit"), 32),
    "hf-dinov2-registers": (lambda: _hf("dinov2_with_registers"), 32),
}  # fmt: skip
ADAPTER_INPUT = {"scaled": "mlp_input"}  # every other one reads x', the residual


def make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return FAMILIES[name][0]().eval()


def inputs(name: str, count: int = 3) -> torch.Tensor:
    side = FAMILIES[name][1]
    return torch.randn(count, 3, side, side, generator=torch.Generator().manual_seed(1))


def features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = as_backbone(backbone).forward_features(x)
    return out[0] if isinstance(out, (list, tuple)) else out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_found_family_starts_as_its_backbone_trains_only_the_task_and_moves_when_the_adapter_does(name):
    model = adaptformer.adapt(make(name), "adaptformer", num_classes=3, bottleneck=4).eval()
    assert model.family.name == "found by its anatomy" or name == "scaled"
    if name == "plain-module":  # its own residual found: x' enters ln_2, the branch is feed_forward's output
        part = model.anatomy.parts[0]
        assert part.residual_at is model.backbone.model.layers[0].ln_2
        assert part.branch_at is model.backbone.model.layers[0].feed_forward
    assert model.anatomy.adapter_input == ADAPTER_INPUT.get(name, "residual")
    x = inputs(name)
    with torch.no_grad():
        assert torch.allclose(features(model.backbone, x), features(make(name), x), atol=1e-5)
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2])).backward()
    task = {id(p) for p in model.task.parameters()}
    assert all(p.grad is None for p in model.backbone.parameters() if id(p) not in task)
    downs = [a["adaptmlp"].down_proj.weight for a in model.task.blocks.values()]
    assert model.task.head[-1].weight.grad.abs().sum() > 0 and all(d.grad is not None for d in downs)
    with torch.no_grad():
        for adapter in model.task.blocks.values():
            adapter["adaptmlp"].up_proj.weight.normal_()
        plain = features(make(name), x)
        assert (features(model.eval().backbone, x) - plain).abs().max() > 1e-3 * plain.abs().max()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_mixed_batches_of_every_hosted_method_equal_each_task_alone_and_files_round_trip(name, tmp_path):
    model = adaptformer.adapt(make(name), "adaptformer", num_classes=3, task="a", bottleneck=4).eval()
    model.add_task("e", "adaptformer", classes=2, bottleneck=2, placement="sequential")
    model.add_task("c", "linear", classes=2)
    hosted = hosted_methods(model)
    for method in ("lora", "bitfit", "ssf"):
        if hosted[method] == "yes":
            model.add_task(method, method, classes=4)
    for parameter in model.tasks.parameters():
        parameter.data.normal_(0, 0.05)
    names = list(model.tasks)
    x = inputs(name, 1).expand(len(names), -1, -1, -1).contiguous()
    with torch.no_grad():
        rows = model(x, tasks=names)
        for row, task in zip(rows, names, strict=True):
            torch.testing.assert_close(row, model(x[:1], task=task)[0], atol=1e-5, rtol=1e-4, msg=task)
        for task in names[:2]:
            path = adaptformer.save_task(model, tmp_path / f"{task}.safetensors", task=task)
            fresh = adaptformer.apply_task(make(name), path).eval()
            torch.testing.assert_close(fresh(x[:1]), model(x[:1], task=task), atol=1e-6, rtol=1e-5)
    header, tensors = read_task_file(path)
    assert header.meta["backbone"]["anatomy"] == model.anatomy.signature
    assert header.meta["backbone"]["adapter_input"] == ADAPTER_INPUT.get(name, "residual")
    meta = copy.deepcopy(header.meta)
    meta["backbone"]["anatomy"] = "0" * 16  # made where discovery found other blocks
    write_task(tmp_path / "other.safetensors", meta, tensors)
    with pytest.raises(AdaptFormerError, match="its backbone's blocks were found otherwise"):
        adaptformer.apply_task(make(name), tmp_path / "other.safetensors")


@pytest.mark.parametrize("name", ["convnext", "davit", "scaled", "hf-beit"])
def test_checkpointed_blocks_give_the_gradients_of_plain_ones(name):
    model = adaptformer.adapt(make(name), "adaptformer", num_classes=3, bottleneck=4, dropout=0.0)
    if hosted_methods(model)["lora"] == "yes":
        model.add_task("lora", "lora", classes=3)
    x, labels = inputs(name), torch.tensor([0, 1, 2])
    for task in model.tasks:
        model.set_task(task)
        for parameter in model.task.parameters():
            parameter.data.normal_(0, 0.05)
        grads = []
        for checkpointed in (False, True):
            model.set_grad_checkpointing(checkpointed)
            model.zero_grad()
            F.cross_entropy(model.train()(x), labels).backward()
            grads.append([p.grad.clone() for p in model.task.parameters()])
        for plain, recomputed in zip(*grads, strict=True):
            torch.testing.assert_close(recomputed, plain, atol=1e-6, rtol=1e-5)
        assert any(g.abs().sum() > 0 for g in grads[0])


@pytest.mark.parametrize("name", ["convnext", "tinyvit", "gmixer", "hf-dinov2-registers"])
def test_forward_intermediates_equal_the_plain_backbones_at_zero_init(name):
    model = adaptformer.adapt(make(name), "adaptformer", num_classes=3, bottleneck=4).eval()
    x = inputs(name, 2)
    with torch.no_grad():
        final, adapted = model.forward_intermediates(x, indices=2)
        if name.startswith("hf-"):  # no forward_intermediates of its own: the outputs of the blocks found
            assert len(adapted) == 2 and all(t.shape == (2, 1 + 4 + 16, 32) for t in adapted)
            hidden = make(name)(pixel_values=x, output_hidden_states=True).hidden_states
            expected = list(hidden[-2:])
        else:
            expected = make(name).forward_intermediates(x, indices=2, intermediates_only=True)
        for ours, theirs in zip(adapted, expected, strict=True):
            assert ours.shape == theirs.shape
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        for adapter in model.task.blocks.values():
            adapter["adaptmlp"].up_proj.weight.normal_()
        moved = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert (moved[-1] - expected[-1]).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["convnext", "gmixer", "davit", "hf-aimv2"])
def test_a_found_family_compiles_in_one_graph_and_matches_eager(name):
    torch._dynamo.reset()
    model = adaptformer.adapt(make(name), "adaptformer", num_classes=3, bottleneck=4).eval()
    for parameter in model.task.parameters():
        parameter.data.normal_(0, 0.05)
    x = inputs(name, 2)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend="aot_eager")(x), model(x), atol=1e-5, rtol=1e-4)


def test_the_adapter_beside_an_mlp_computes_its_equation():
    """mlp_input: y = x' + γ·(MLP(n) + s·Up(ReLU(Down(n)))), n = LN2(x'), read off the block by hand."""
    model = adaptformer.adapt(make("scaled"), "adaptformer", num_classes=3, bottleneck=4).eval()
    for parameter in model.task.parameters():
        parameter.data.normal_(0, 0.1)
    seen = {}
    block = model.blocks[1]
    block.norm2.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    block.register_forward_hook(lambda m, args, out: seen.__setitem__("y", out))
    with torch.no_grad():
        model.pooled_features(inputs("scaled"))
        n = block.norm2(seen["x"])
        expected = seen["x"] + block.gamma * (block.mlp.forward(n) + model.task.adapter(1)(n))  # forward: no hooks
    torch.testing.assert_close(seen["y"], expected, atol=1e-5, rtol=1e-5)


def test_a_model_with_no_mlp_is_refused_in_one_line_and_an_mlp_on_one_token_is_left_out():
    with pytest.raises(AdaptFormerError) as error:
        adaptformer.adapt(timm.create_model("resnet18", pretrained=False), "adaptformer", num_classes=3)
    assert str(error.value) == "ResNet: not supported: it has no MLP block (no module shaped like an MLP)"
    cait = timm.create_model(
        "cait_xxs24_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        depth_token_only=1,
    )  # fmt: skip
    model = adaptformer.adapt(cait, "adaptformer", num_classes=3)
    assert model.depth == 2 and model.blocks == list(cait.blocks)  # the class-attention block is not one of them
    assert model.anatomy.left_out == (
        "blocks_token_only.0 (LayerScaleBlockClassAttn): its MLP Mlp runs on one vector per sample (a pooled or "
        "class token)",
    )


def test_params_and_describe_name_the_adapter_input(capsys):
    from adaptformer.cli import main

    assert main(["params", "--model", "convnext_atto", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["adapter_input"] == "residual" and report["blocks"] == 12
    assert main(["describe", "--model", "convnext_atto"]) == 0
    text = capsys.readouterr().out
    assert "adapter input: residual" in text and "stages.0.blocks.0 (ConvNeXtBlock): residual" in text
    assert "lora         method lora: the backbone's blocks have no hookable qkv" in text
    assert main(["describe", "--model", "resnet18"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: ResNet: not supported: it has no MLP block (no module shaped like an MLP)"
    )
