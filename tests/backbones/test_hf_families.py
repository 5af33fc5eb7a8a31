"""Hugging Face CLIP and SigLIP vision towers and Swin (base models and ``*ForImageClassification``) adapt:
zero-initialised tasks start at each class's own pooled features, the adapter's equation holds against the HF
layer's parts, tasks train only themselves, mixed batches equal each task alone, task files round-trip."""

import pytest
import torch
import torch.nn.functional as F

import adaptformer

SMALL = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
SWIN = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4)


def build(name: str, seed: int = 0):
    import transformers as t

    torch.manual_seed(seed)
    models = {
        "CLIPVisionModel": lambda: t.CLIPVisionModel(t.CLIPVisionConfig(**SMALL)),
        "CLIPForImageClassification": lambda: t.CLIPForImageClassification(
            t.CLIPConfig(vision_config=SMALL, text_config=TEXT, num_labels=5)
        ),
        "SiglipVisionModel": lambda: t.SiglipVisionModel(t.SiglipVisionConfig(**SMALL)),
        "SiglipForImageClassification": lambda: t.SiglipForImageClassification(
            t.SiglipConfig(vision_config=SMALL, text_config=TEXT, num_labels=5)
        ),
        "SwinModel": lambda: t.SwinModel(t.SwinConfig(**SWIN)),
        "SwinForImageClassification": lambda: t.SwinForImageClassification(t.SwinConfig(**SWIN, num_labels=5)),
    }
    return models[name]().eval()


def own_features(name: str, model, x):
    """What the class itself gives its classifier / pooler."""
    if name == "CLIPForImageClassification":
        return model.vision_model(pixel_values=x).last_hidden_state[:, 1:].mean(dim=1)
    if name == "SiglipForImageClassification":
        return model.vision_model(pixel_values=x).last_hidden_state.mean(dim=1)
    if name == "SwinForImageClassification":
        return model.swin(pixel_values=x).pooler_output
    return model(pixel_values=x).pooler_output


NAMES = [
    "CLIPVisionModel",
    "CLIPForImageClassification",
    "SiglipVisionModel",
    "SiglipForImageClassification",
    "SwinModel",
    "SwinForImageClassification",
]
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", ["adaptformer", "linear"])
def test_a_zero_initialised_task_starts_at_the_models_own_features_and_trains_only_itself(name, method):
    model = adaptformer.adapt(build(name), method, num_classes=3).eval()
    with torch.no_grad():
        assert torch.allclose(model.pooled_features(X), own_features(name, build(name), X), atol=1e-5)
    model.train()
    F.cross_entropy(model(X), torch.tensor([0, 1, 2])).backward()
    task = {id(p) for p in model.task.parameters()}
    assert all(p.grad is None for p in model.backbone.parameters() if id(p) not in task)
    assert all(p.grad is not None for p in model.task.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["CLIPVisionModel", "SiglipVisionModel"])
def test_clip_and_siglip_layers_compute_the_adapter_equation(name):
    """x' = x + Attn(LN1(x)); m = MLP(LN2(x')); y = x' + m + a(x'), with the HF layer's own parts."""
    model = adaptformer.adapt(build(name).double(), "adaptformer", num_classes=3, bottleneck=4).eval()
    for parameter in model.task.parameters():
        parameter.data.normal_(0, 0.2)
    tower = model.backbone.model
    x = X.double()
    with torch.no_grad():
        hidden = tower.embeddings(x)
        if hasattr(tower, "pre_layrnorm"):
            hidden = tower.pre_layrnorm(hidden)
        for index, layer in enumerate(model.blocks):
            x_prime = hidden + layer.self_attn(layer.layer_norm1(hidden))[0]
            mlp = layer.mlp  # its parts, not the module: the module's output is where the hook adds the adapter
            m = mlp.fc2(mlp.activation_fn(mlp.fc1(layer.layer_norm2(x_prime))))
            hidden = x_prime + m + model.task.adapter(index)(x_prime)
        expected = tower.post_layernorm(hidden)
        assert (model.forward_features(x) - expected).abs().max() < 1e-10


@pytest.mark.parametrize("name", ["CLIPVisionModel", "SiglipForImageClassification", "SwinModel"])
def test_mixed_batches_equal_each_task_alone_and_task_files_round_trip(name, tmp_path):
    model = adaptformer.adapt(build(name), "adaptformer", num_classes=3, task="a", bottleneck=4).eval()
    model.add_task("b", "adaptformer", classes=2, bottleneck=2, placement="sequential")
    model.add_task("c", "linear", classes=4)
    for parameter in model.tasks.parameters():
        parameter.data.normal_(0, 0.05)
    names = list(model.tasks)
    x = X[:1].expand(len(names), -1, -1, -1).contiguous()
    with torch.no_grad():
        for row, task in zip(model(x, tasks=names), names, strict=True):
            assert torch.allclose(row, model(x[:1], task=task)[0], atol=1e-5), task
        path = adaptformer.save_task(model, tmp_path / "a.safetensors", task="a")
        meta, _ = adaptformer.read_task(path)
        assert meta["backbone"]["class"] == name
        fresh = adaptformer.apply_task(build(name), path).eval()
        assert torch.allclose(fresh(x[:1]), model(x[:1], task="a"), atol=1e-6)


@pytest.mark.parametrize("name", ["CLIPVisionModel", "SiglipVisionModel"])
def test_vpt_trains_its_prompts_on_clip_and_siglip(name):
    model = adaptformer.adapt(build(name), "vpt", num_classes=3, vpt_tokens=2).train()
    F.cross_entropy(model(X), torch.tensor([0, 1, 2])).backward()
    assert model.task.embeddings[0].grad is not None and model.task.embeddings[0].grad.abs().sum() > 0


def test_hf_swin_adapters_follow_its_stages_and_prompts_are_refused():
    model = adaptformer.adapt(build("SwinModel"), "adaptformer", num_classes=3, bottleneck=4)
    assert [(s.name, s.width) for s in model.stages()] == [("stage 1", 16), ("stage 2", 32)]
    assert [model.task.adapter(i).dim for i in range(model.depth)] == [16, 16, 32, 32]
    assert model.head[-1].in_features == 32
    refused = r"^method vpt: SwinModel: its attention runs in windows.*; use adaptformer, lora, bitfit or ssf$"
    with pytest.raises(adaptformer.AdaptFormerError, match=refused):
        adaptformer.adapt(build("SwinModel"), "vpt", num_classes=3)


@pytest.mark.parametrize("kind", ["CLIPModel", "SiglipModel"])
def test_a_saved_dual_encoder_folder_adapts_through_its_vision_tower_and_reloads(kind, tmp_path):
    import transformers as t

    torch.manual_seed(0)
    config = getattr(t, kind.replace("Model", "Config"))(vision_config=SMALL, text_config=TEXT)
    source = getattr(t, kind)(config).eval()
    source.save_pretrained(tmp_path / "hub")
    model = adaptformer.create_model(f"hf:{tmp_path / 'hub'}", "adaptformer", num_classes=3, bottleneck=4).eval()
    with torch.no_grad():
        expected = source.vision_model(pixel_values=X).pooler_output
        assert torch.allclose(model.pooled_features(X), expected, atol=1e-5)
    assert sum(p.numel() for p in model.backbone.parameters()) == sum(
        p.numel() for p in source.vision_model.parameters()
    )  # the text tower is not kept
    for parameter in model.task.parameters():
        parameter.data.normal_(0, 0.05)
    path = adaptformer.save_task(model, tmp_path / "task.safetensors")
    with torch.no_grad():
        assert torch.allclose(adaptformer.load_task(path).eval()(X), model(X), atol=1e-6)
