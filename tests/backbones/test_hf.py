"""Hugging Face ViT / VideoMAE models adapt like timm's: the same equations, every method, task files."""

import copy

import pytest
import torch
import torch.nn.functional as F

import adaptformer
from adaptformer.backbones.hf import HFBackbone
from conftest import tiny_hf_vit as hf_vit
from conftest import tiny_videomae_config


def hf_videomae(seed=0, classification=True):
    from transformers import VideoMAEForVideoClassification, VideoMAEModel

    torch.manual_seed(seed)
    config = tiny_videomae_config(num_labels=7)
    return (VideoMAEForVideoClassification if classification else VideoMAEModel)(config).eval()


def randomize(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.task.named_parameters():
            if "adaptmlp" in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.5)


def reference_layers(model, hidden):
    """The equations, written with the HF layer's own parts: x' = x + Attn(LN_before(x));
    m = Dropout(Dense(Intermediate(LN_after(x')))); parallel y = x' + m + a(x'); sequential y = x' + m + a(m)."""
    task = model.task
    for index, layer in enumerate(model.blocks):
        x_prime = hidden + layer.attention(layer.layernorm_before(hidden))
        # output.dropout is where the hook adds the adapter: not called here (it is the identity in eval mode)
        m = layer.output.dense(layer.intermediate(layer.layernorm_after(x_prime)))
        adapter = task.adapter(index)
        a = adapter(x_prime if task.parallel else m) if adapter is not None else 0
        hidden = x_prime + m + a
    return hidden


@pytest.mark.parametrize("placement", ["parallel", "sequential"])
def test_hf_vit_equals_the_equations(placement):
    model = adaptformer.adapt(
        hf_vit().double(), "adaptformer", num_classes=3, bottleneck=4, placement=placement, layers="top:1"
    )
    randomize(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    vit = model.backbone.model
    expected = vit.layernorm(reference_layers(model, vit.embeddings(x)))
    assert (model.forward_features(x) - expected).abs().max() < 1e-10
    assert (model.forward_features(x) - hf_vit().double()(pixel_values=x).last_hidden_state).abs().max() > 1e-3


def test_hf_videomae_equals_the_equations_and_keeps_its_fc_norm():
    source = hf_videomae()
    model = adaptformer.adapt(copy.deepcopy(source).double(), "adaptformer", num_classes=3, bottleneck=4)
    randomize(model)
    model.eval()
    clip = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    mae = model.backbone.model
    expected = reference_layers(model, mae.embeddings(clip.permute(0, 2, 1, 3, 4), None))
    assert (model.forward_features(clip) - expected).abs().max() < 1e-10
    assert torch.equal(model.task.fc_norm.weight, source.fc_norm.weight.double())


@pytest.mark.parametrize("method", ["adaptformer", "linear", "full"])
def test_zero_initialised_methods_equal_the_hf_model(method):
    source = hf_videomae()
    model = adaptformer.adapt(copy.deepcopy(source), method, num_classes=7).eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(clip), pre_logits=True)
        reference = source.fc_norm(source.videomae(pixel_values=clip.permute(0, 2, 1, 3, 4)).last_hidden_state.mean(1))
    torch.testing.assert_close(pooled, reference)


def test_vpt_and_training_step_on_hf_models():
    model = adaptformer.adapt(hf_vit(), "vpt", num_classes=3, vpt_tokens=2)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    assert model.task.embeddings[0].grad is not None and model.task.embeddings[0].grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_task_files_record_the_family_and_reload_on_a_saved_hf_model(tmp_path):
    source = hf_videomae(classification=False)
    source.save_pretrained(tmp_path / "videomae")
    model = adaptformer.create_model(f"hf:{tmp_path / 'videomae'}", "adaptformer", num_classes=3, bottleneck=4)
    randomize(model)
    path = adaptformer.save_task(model, tmp_path / "task.safetensors")
    meta, _ = adaptformer.read_task(path)
    assert meta["backbone"]["family"] == "hf" and meta["backbone"]["name"] == f"hf:{tmp_path / 'videomae'}"
    assert meta["preprocessing"]["frames"] == 4
    restored = adaptformer.load_task(path).eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored(clip), model.eval()(clip))
    assert isinstance(restored.backbone, HFBackbone)


def test_image_classification_models_are_adapted_through_their_base_model():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=10,
    )
    source = ViTForImageClassification(config).eval()
    model = adaptformer.adapt(copy.deepcopy(source), "linear", num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            model.forward_head(model.forward_features(x), pre_logits=True), source.vit(x).last_hidden_state[:, 0]
        )
    assert "classifier.weight" not in {k.split("model.", 1)[-1] for k in model.backbone.state_dict()}
    assert model.parameter_report().trainable == 32 * 4 + 4


def hf_dinov2(seed=0, classification=False):
    from transformers import Dinov2Config, Dinov2ForImageClassification, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    return (Dinov2ForImageClassification if classification else Dinov2Model)(config).eval()


def test_hf_dinov2_equals_the_equations_and_starts_as_the_pretrained_model():
    plain = hf_dinov2().double()
    model = adaptformer.adapt(hf_dinov2().double(), "adaptformer", num_classes=3, bottleneck=4).eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert (model.forward_features(x) - plain(pixel_values=x).last_hidden_state).abs().max() < 1e-12  # zero init
        randomize(model)
        hidden = model.backbone.model.embeddings(x)
        for index, layer in enumerate(model.blocks):  # x' = x + LS1(Attn(N1(x))); m = LS2(MLP(N2(x')))
            x_prime = hidden + layer.layer_scale1(layer.attention(layer.norm1(hidden)))
            # layer_scale2 is where the hook adds the adapter: its scale is applied by hand here
            m = layer.layer_scale2.lambda1 * layer.mlp(layer.norm2(x_prime))
            hidden = x_prime + m + model.task.adapter(index)(x_prime)
        expected = model.backbone.model.layernorm(hidden)
        assert (model.forward_features(x) - expected).abs().max() < 1e-10
    spec = model.input_spec()
    assert spec.size == 224 and spec.mean == (0.485, 0.456, 0.406) and abs(spec.crop_pct - 0.875) < 1e-9


@pytest.mark.parametrize("method", ["linear", "vpt", "full"])
def test_hf_dinov2_classification_model_adapts_with_every_method(method):
    model = adaptformer.adapt(hf_dinov2(classification=True), method, num_classes=3)
    model.train()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    trained = [p for n, p in model.named_parameters() if p.requires_grad and "mask_token" not in n]  # pretraining's
    assert trained and all(p.grad is not None for p in trained)


def test_a_transformers_model_that_takes_no_pixels_is_refused_in_one_line_and_left_untouched():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(adaptformer.AdaptFormerError) as error:
        adaptformer.adapt(bert, "adaptformer", num_classes=3)
    assert str(error.value) == "transformers BertModel: not a vision model (its input is input_ids)"
    assert not any(hook for module in bert.modules() for hook in module._forward_pre_hooks.values())
