"""LoRA, BitFit and SSF beside AdaptFormer: LoRA equals PEFT's LoRA on the same timm ViT; BitFit equals training
the backbone's biases; SSF equals a scale-and-shift layer after each operation; all start at the pretrained
model, train only their own tensors, round-trip through task files and mix in one batch."""

import copy

import pytest
import timm
import torch
from torch import nn

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.methods.registry import make_method_config
from conftest import tiny_hf_vit, tiny_vit

SITE_PATHS = {"norm1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "norm2": "norm2", "fc1": "mlp.fc1"}
SITE_PATHS["fc2"] = "mlp.fc2"


def tokens(model, x):
    with torch.no_grad():
        return model.forward_features(x)


def randomize(task, std=0.1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in task.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)


def test_lora_equals_peft_lora_on_the_same_timm_vit(images):
    from peft import LoraConfig, get_peft_model

    backbone = tiny_vit()
    peft_model = get_peft_model(
        copy.deepcopy(backbone),
        # the blocks' layers (a bare "proj" would also match the patch embedding's convolution)
        LoraConfig(r=4, lora_alpha=12, target_modules=r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"),
    ).eval()
    model = adaptformer.adapt(
        backbone, "lora", num_classes=3, lora_rank=4, lora_alpha=12, lora_targets=("qkv", "proj", "mlp")
    ).eval()
    with torch.no_grad():  # non-zero B everywhere, the same values in both
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_B") and isinstance(module.lora_B, nn.ModuleDict):
                module.lora_B["default"].weight.normal_(std=0.2)
                block = int(name.split("blocks.")[1].split(".")[0])
                update = model.task.blocks[str(block)][name.rsplit(".", 1)[1]]
                update.lora_A.weight.copy_(module.lora_A["default"].weight)
                update.lora_B.weight.copy_(module.lora_B["default"].weight)
    assert sum(hasattr(m, "lora_B") for m in peft_model.modules()) == 8  # 4 layers x 2 blocks
    reference = tokens(peft_model.base_model.model, images)
    assert not torch.allclose(reference, tokens(tiny_vit(), images), atol=1e-3)  # the updates count
    assert torch.allclose(tokens(model, images), reference, atol=1e-6)


@pytest.mark.parametrize(
    "method,options", [("lora", {"lora_targets": ("qkv", "mlp")}), ("bitfit", {}), ("ssf", {"ssf_init": "identity"})]
)
def test_a_new_task_starts_at_the_pretrained_model(images, method, options):
    plain = tokens(tiny_vit(), images)
    model = adaptformer.adapt(tiny_vit(), method, num_classes=3, **options).eval()
    assert torch.equal(tokens(model, images), plain)


def _with_site(backbone: nn.Module, change) -> nn.Module:
    """A copy of the backbone in which every block's operation ``site`` is replaced by ``change(i, site, module)``."""
    reference = copy.deepcopy(backbone)
    for index, block in enumerate(reference.blocks):
        for site, path in SITE_PATHS.items():
            parent_path, _, leaf = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            setattr(parent, leaf, change(index, site, getattr(parent, leaf)))
    return reference


def test_bitfit_equals_training_the_backbones_biases(images):
    backbone = tiny_vit()
    model = adaptformer.adapt(copy.deepcopy(backbone), "bitfit", num_classes=3).eval()
    randomize(model.task)
    offsets = model.task.blocks

    def shifted(index, site, module):
        module = copy.deepcopy(module)
        with torch.no_grad():
            module.bias.add_(offsets[str(index)][site].bias)
        return module

    assert torch.allclose(tokens(model, images), tokens(_with_site(backbone, shifted), images), atol=1e-6)
    assert set(offsets["0"]) == set(SITE_PATHS)  # every operation with a bias


class _ScaleShiftAfter(nn.Module):
    def __init__(self, module, scale, shift):
        super().__init__()
        self.module, self.scale, self.shift = module, scale.detach().clone(), shift.detach().clone()

    def forward(self, x):
        return self.module(x) * self.scale + self.shift


def test_ssf_equals_a_scale_and_shift_after_each_operation(images):
    backbone = tiny_vit()
    model = adaptformer.adapt(copy.deepcopy(backbone), "ssf", num_classes=3).eval()  # the SSF code's N(1, .02)
    layers = model.task.blocks

    def scaled(index, site, module):
        return _ScaleShiftAfter(module, layers[str(index)][site].ssf_scale, layers[str(index)][site].ssf_shift)

    reference = _with_site(backbone, scaled)
    assert torch.allclose(tokens(model, images), tokens(reference, images), atol=1e-6)
    assert not torch.allclose(tokens(model, images), tokens(backbone, images), atol=1e-4)


@pytest.mark.parametrize("method", ["lora", "bitfit", "ssf"])
def test_gradients_reach_only_the_task(images, method):
    model = adaptformer.adapt(tiny_vit(), method, num_classes=3)
    model.add_task("other", "adaptformer", classes=2, activate=False)
    model.train()
    model(images).sum().backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(name.startswith("tasks.default.") for name in trained)
    assert any(".blocks." in name for name in trained)  # the method's own tensors, not only the head


def test_mixed_batches_equal_each_task_alone(images):
    model = adaptformer.adapt(tiny_vit(), "lora", num_classes=3, lora_targets=("qkv", "proj", "mlp"))
    model.add_task("bias", "bitfit", classes=4)
    model.add_task("scale", "ssf", classes=2)
    model.add_task("adapter", "adaptformer", classes=5, bottleneck=4)
    model.add_task("prompt", "vpt", classes=2, vpt_tokens=2)
    model.eval()
    for task in model.tasks.values():
        randomize(task, seed=len(task.classes))
    names = ["default", "bias", "scale", "adapter", "prompt", "bias", "default", "scale"]
    x = torch.randn(len(names), 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mixed = model(x, tasks=names)
        for i, name in enumerate(names):
            assert torch.allclose(mixed[i], model(x[i : i + 1], task=name)[0], atol=1e-5), name


@pytest.mark.parametrize("method", ["lora", "bitfit", "ssf"])
def test_task_files_round_trip(tmp_path, images, method):
    model = adaptformer.adapt(tiny_vit(), method, num_classes=3).eval()
    randomize(model.task)
    path = adaptformer.save_task(model, tmp_path / f"{method}.safetensors")
    loaded = adaptformer.apply_task(tiny_vit(), path).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_options_are_checked_and_hugging_face_layers_are_hooked_at_their_own_projections():
    with pytest.raises(AdaptFormerError, match=r"lora_targets: expected some of qkv, proj, mlp, got \['q'\]"):
        make_method_config("lora", lora_targets=("q",))
    with pytest.raises(AdaptFormerError, match="lora_rank: expected an integer >= 1"):
        make_method_config("lora", lora_rank=0)
    with pytest.raises(AdaptFormerError, match="ssf_init: expected one of normal, identity"):
        make_method_config("ssf", ssf_init="zeros")
    x = torch.randn(2, 3, 32, 32)
    for method in ("lora", "bitfit", "ssf"):  # HF ViT: separate query, key and value projections
        model = adaptformer.adapt(
            tiny_hf_vit(), method, num_classes=3, **({"ssf_init": "identity"} if method == "ssf" else {})
        )
        sites = set(model.task.blocks["0"])
        assert {"q", "k", "v"} <= sites and ({"proj", "fc1", "fc2"} <= sites or method == "lora")
        with torch.no_grad():  # zero-initialised: the backbone's own features
            plain = tiny_hf_vit()(pixel_values=x).last_hidden_state[:, 0]
            assert torch.allclose(model.eval().pooled_features(x), plain, atol=1e-5)
        for parameter in model.task.blocks.parameters():
            parameter.data.normal_(0, 0.1)
        with torch.no_grad():
            assert not torch.allclose(model.pooled_features(x), plain, atol=1e-3)
    with pytest.raises(AdaptFormerError, match="method lora: the backbone's blocks have no hookable qkv"):
        adaptformer.adapt(timm.create_model("convnext_atto", pretrained=False), "lora", num_classes=3)


def test_parameter_counts():
    counts = {
        method: adaptformer.adapt(tiny_vit(), method, num_classes=3, **options).parameter_report().adapters
        for method, options in (("lora", {"lora_rank": 4}), ("bitfit", {}), ("ssf", {}))
    }
    d, hidden, depth = 32, 128, 2  # the tiny ViT: width 32, MLP 128, 2 blocks
    assert counts["lora"] == depth * (d * 4 + 4 * 3 * d)  # A (4 x d) + B (3d x 4) on qkv
    assert counts["bitfit"] == depth * (3 * d + d + hidden + d + 2 * d)  # qkv, proj, fc1, fc2, two norms
    assert counts["ssf"] == 2 * counts["bitfit"]  # a scale and a shift wherever BitFit has a bias
