"""Adapter+, Houlsby, Pfeiffer, LayerNorm tuning, DoRA, RepAdapter and FacT (TT, TK): each equals its paper's
equations written out by hand on a timm ViT (from the official code where public), starts at the pretrained model
where the paper starts at the identity, trains only its own tensors, mixes in one batch with every other method,
round-trips through task files, and merges into the backbone where it is linear in the frozen weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from test_lora_bitfit_ssf import randomize, tokens
from torch import nn

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.tasks.merge import merged_state_dict
from conftest import tiny_hf_vit, tiny_vit

NEW = ["adapterplus", "houlsby", "pfeiffer", "lntune", "dora", "repadapter", "fact-tt", "fact-tk", "convpass"]
EXACT_START = ["lntune", "dora", "repadapter", "fact-tt", "fact-tk", "convpass"]  # zero-initialised: pretrained
MERGEABLE = ["lora", "dora", "repadapter", "fact-tt", "fact-tk", "bitfit", "ssf", "lntune", "linear"]
NOT_MERGEABLE = ["adaptformer", "vpt", "houlsby", "pfeiffer", "adapterplus", "convpass", "full"]
OPTIONS = {"dora": {"lora_targets": ("qkv", "proj", "mlp")}, "fact-tk": {"fact_rank": 4}}


def adapted(method, backbone=None, **options):
    options = {**OPTIONS.get(method, {}), **options}
    return adaptformer.adapt(backbone or tiny_vit(), method, num_classes=3, **options).eval()


# ---- the equations ------------------------------------------------------------------------------------------
def bottleneck(adapter, h):
    """Adapter+ code, ``Adapter.forward`` in eval mode: s ⊙ Up(GELU(Down(norm(h))))."""
    if adapter.norm is not None:
        h = adapter.norm(h)
    out = F.linear(F.gelu(F.linear(h, adapter.down.weight, adapter.down.bias)), adapter.up.weight, adapter.up.bias)
    return out * (adapter.scale if adapter.scale is not None else 1.0)


def reference_tokens(backbone, x, block_forward):
    b = backbone
    h = b.norm_pre(b._pos_embed(b.patch_embed(x)))
    for index, block in enumerate(b.blocks):
        h = block_forward(index, block, h)
    return b.norm(h)


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer", "adapterplus"])
def test_sequential_adapters_equal_the_adapter_plus_code(method, images):
    backbone = tiny_vit()
    model = adapted(method, copy.deepcopy(backbone), adapter_bottleneck=4)
    randomize(model.task, std=0.2)
    blocks = model.task.blocks

    def forward(index, block, x):
        adapters = blocks[str(index)]
        if method == "houlsby":  # forward_houlsby
            y = block.attn(block.norm1(x))
            x = x + (y + bottleneck(adapters["attention"], y))
            y = block.mlp(block.norm2(x))
            return x + (y + bottleneck(adapters["mlp"], y))
        y = x + block.attn(block.norm1(x))
        z = y + block.mlp(block.norm2(y))
        return z + bottleneck(adapters["adapter"], z)  # forward_pfeiffer (norm in the adapter) / forward_post

    with torch.no_grad():
        expected = reference_tokens(backbone, images, forward)
    assert torch.allclose(tokens(model, images), expected, atol=1e-5)
    assert not torch.allclose(expected, tokens(backbone, images), atol=1e-3)


def test_adapter_plus_has_a_scale_per_channel_and_houlsby_init():
    model = adapted("adapterplus", adapter_bottleneck=8)
    adapter = model.task.blocks["0"]["adapter"]
    assert adapter.norm is None and adapter.scale.shape == (32,) and torch.equal(adapter.scale, torch.ones(32))
    assert adapter.down.weight.abs().max() <= 0.02 and adapter.down.weight.std() > 0.003  # N(0, .01) cut at 2σ
    assert torch.equal(adapter.up.bias, torch.zeros(32))
    assert isinstance(adapted("pfeiffer").task.blocks["0"]["adapter"].norm, nn.LayerNorm)


def test_layernorm_tuning_equals_training_the_norms(images):
    backbone = tiny_vit()
    model = adapted("lntune", copy.deepcopy(backbone))
    randomize(model.task.blocks, std=0.3)
    reference = copy.deepcopy(backbone)
    with torch.no_grad():
        for index, block in enumerate(reference.blocks):
            for name in ("norm1", "norm2"):
                delta = model.task.blocks[str(index)][name]
                getattr(block, name).weight.add_(delta.weight_delta)
                getattr(block, name).bias.add_(delta.bias_delta)
    assert torch.allclose(tokens(model, images), tokens(reference, images), atol=1e-5)
    assert model.parameter_report().adapters == 2 * 2 * 2 * 32  # 2 blocks x 2 norms x (γ, β) x width


def test_dora_equals_peft_dora_on_the_same_timm_vit(images):
    from peft import LoraConfig, get_peft_model

    backbone = tiny_vit()
    peft_model = get_peft_model(
        copy.deepcopy(backbone),
        LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=r"blocks\.\d+\.(attn\.qkv|mlp\.fc1)"),
    ).eval()
    model = adapted("dora", copy.deepcopy(backbone), lora_rank=4, lora_alpha=8, lora_targets=("qkv", "mlp"))
    updates = model.task.blocks
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_B") and isinstance(module.lora_B, nn.ModuleDict) and "default" in module.lora_B:
                module.lora_B["default"].weight.normal_(std=0.2)
                block, site = int(name.split("blocks.")[1].split(".")[0]), name.rsplit(".", 1)[1]
                ours = updates[str(block)][site]
                ours.lora_A.weight.copy_(module.lora_A["default"].weight)
                ours.lora_B.weight.copy_(module.lora_B["default"].weight)
                magnitude = module.lora_magnitude_vector["default"].weight
                assert torch.allclose(ours.magnitude, magnitude)  # both start at ‖W₀‖ per row
                magnitude.mul_(1.5)
                ours.magnitude.copy_(magnitude)
    assert set(updates["0"]) == {"qkv", "fc1", "fc2"}  # mlp targets fc1 and fc2; PEFT was given fc1 alone
    with torch.no_grad():
        for block in updates.values():
            block["fc2"].lora_B.weight.zero_()
            block["fc2"].magnitude.copy_(block["fc2"].direction_norm())
    expected = tokens(peft_model.base_model.model, images)
    assert not torch.allclose(expected, tokens(backbone, images), atol=1e-3)
    assert torch.allclose(tokens(model, images), expected, atol=1e-5)


class _OfficialRepAdapter(nn.Module):
    """``repadapter.py``'s RepAdapter: 1x1 Conv1d Down, dropout, grouped 1x1 Conv1d Up, scaled, plus x."""

    def __init__(self, ours, groups):
        super().__init__()
        d, r = ours.up.weight.shape[0], ours.down.weight.shape[0]
        self.conv_A, self.conv_B = nn.Conv1d(d, r, 1), nn.Conv1d(r, d, 1, groups=groups)
        with torch.no_grad():
            self.conv_A.weight.copy_(ours.down.weight[..., None])
            self.conv_A.bias.copy_(ours.down.bias)
            self.conv_B.weight.copy_(ours.up.weight[..., None])
            self.conv_B.bias.copy_(ours.up.bias)
        self.scale = ours.scale

    def forward(self, x):
        x = x.transpose(1, 2)
        return (self.conv_B(self.conv_A(x)) * self.scale + x).transpose(1, 2)


def test_repadapter_equals_the_official_grouped_convolutions(images):
    backbone = tiny_vit()
    model = adapted("repadapter", copy.deepcopy(backbone), repadapter_bottleneck=4, repadapter_scale=0.7)
    randomize(model.task.blocks, std=0.2)
    official = {
        (i, n): _OfficialRepAdapter(model.task.blocks[str(i)][n], 2) for i in range(2) for n in ("norm1", "norm2")
    }

    def forward(index, block, x):  # forward_vit_block_adapter
        x = x + block.attn(official[index, "norm1"](block.norm1(x)))
        return x + block.mlp(official[index, "norm2"](block.norm2(x)))

    with torch.no_grad():
        expected = reference_tokens(backbone, images, forward)
    assert torch.allclose(tokens(model, images), expected, atol=1e-5)
    with pytest.raises(AdaptFormerError, match="repadapter_groups: 3 does not divide repadapter_bottleneck 8"):
        adapted("repadapter", repadapter_groups=3)


@pytest.mark.parametrize("method", ["fact-tt", "fact-tk"])
def test_fact_equals_the_official_forward(method, images):
    backbone = tiny_vit()
    rank, scale = 4, 0.5
    model = adapted(method, copy.deepcopy(backbone), fact_rank=rank, fact_scale=scale)
    randomize(model.task, std=0.3)
    task = model.task
    u, v = task.fact_u, task.fact_v
    cores = task.blocks if method == "fact-tt" else None

    def core(index, site, slots):
        """The official per-layer cores: TT Linear layers; TK slices of C @ P (twelve slots per block)."""
        if cores is not None:
            return cores[str(index)][site].weight.t()
        return torch.einsum("abk,kn->abn", task.fact_c, task.fact_p[:, 12 * index + slots[0] : 12 * index + slots[1]])

    def forward(index, block, x):  # fact_forward_attn / fact_forward_mlp of FacT/fact_tt.py and fact_tk.py
        h = block.norm1(x)
        qkv = block.attn.qkv(h)
        c = core(index, "qkv", (0, 3))
        if cores is None:
            delta = torch.cat([v(u(h) @ c[:, :, j]) for j in range(3)], dim=-1)
        else:
            delta = v((u(h) @ c).unflatten(-1, (3, rank))).flatten(-2)
        qkv = qkv + delta * scale
        q, k, w = qkv.unflatten(-1, (3, 2, 16)).permute(2, 0, 3, 1, 4).unbind(0)
        attention = F.scaled_dot_product_attention(q, k, w).transpose(1, 2).flatten(-2)
        c = core(index, "proj", (3, 4))
        proj = block.attn.proj(attention) + v(u(attention) @ (c[:, :, 0] if cores is None else c)) * scale
        x = x + proj
        h = block.norm2(x)
        c = core(index, "fc1", (4, 8))
        c1 = c.reshape(rank, 4 * rank) if cores is None else c
        hidden = block.mlp.fc1(h) + v((u(h) @ c1).unflatten(-1, (4, rank))).flatten(-2) * scale
        hidden = block.mlp.act(hidden)
        c = core(index, "fc2", (8, 12))
        c2 = c.reshape(rank, 4 * rank).t() if cores is None else c
        out = block.mlp.fc2(hidden) + v(u(hidden.unflatten(-1, (4, 32))).flatten(-2) @ c2) * scale
        return x + out

    with torch.no_grad():
        expected = reference_tokens(backbone, images, forward)
    assert torch.allclose(tokens(model, images), expected, atol=1e-5)
    per_block = (3 + 1 + 4 + 4) * rank * rank  # TT: a core per layer
    count = 2 * 32 * rank + (2 * per_block if method == "fact-tt" else rank**3 + rank * 12 * 2)
    assert model.parameter_report().adapters == count


def official_convpass(bypass, x, grid=4):
    """``convpass/vtab/convpass.py``, ``Convpass.forward``: the class token and the patch grid convolved apart."""
    quick_gelu = lambda t: t * torch.sigmoid(1.702 * t)  # noqa: E731
    batch, _, _ = x.shape
    down = quick_gelu(bypass.down(x))
    rank = down.shape[-1]
    patch = bypass.conv(down[:, 1:].reshape(batch, grid, grid, rank).permute(0, 3, 1, 2))
    patch = patch.permute(0, 2, 3, 1).reshape(batch, grid * grid, rank)
    cls = (
        bypass.conv(down[:, :1].reshape(batch, 1, 1, rank).permute(0, 3, 1, 2))
        .permute(0, 2, 3, 1)
        .reshape(batch, 1, rank)
    )
    return bypass.up(quick_gelu(torch.cat([cls, patch], dim=1)))


def test_convpass_equals_the_official_forward_block(images):
    backbone = tiny_vit()
    model = adapted("convpass", copy.deepcopy(backbone), convpass_bottleneck=4, convpass_scale=0.5)
    randomize(model.task.blocks, std=0.2)
    blocks = model.task.blocks

    def forward(index, block, x):  # forward_block
        h = block.norm1(x)
        x = x + block.attn(h) + official_convpass(blocks[str(index)]["attention"], h) * 0.5
        h = block.norm2(x)
        return x + block.mlp(h) + official_convpass(blocks[str(index)]["mlp"], h) * 0.5

    with torch.no_grad():
        expected = reference_tokens(backbone, images, forward)
    assert not torch.allclose(expected, tokens(backbone, images), atol=1e-3)
    assert torch.allclose(tokens(model, images), expected, atol=1e-5)
    conv = adapted("convpass").task.blocks["0"]["mlp"].conv.weight  # the official start: identity on the centre
    assert torch.equal(conv[:, :, 1, 1], torch.eye(8)) and conv[:, :, 0].abs().sum() == 0


# ---- what every method promises --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", EXACT_START)
def test_a_new_task_starts_at_the_pretrained_model(method, images):
    assert torch.allclose(tokens(adapted(method), images), tokens(tiny_vit(), images), atol=1e-6)


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer", "adapterplus"])
def test_houlsby_initialised_adapters_start_near_the_pretrained_model(method, images):
    plain, start = tokens(tiny_vit(), images), tokens(adapted(method), images)
    assert 0 < (start - plain).norm() < 0.05 * plain.norm()


@pytest.mark.parametrize("method", NEW)
def test_gradients_reach_only_the_task_and_every_tensor_of_it(method, images):
    model = adaptformer.adapt(tiny_vit(), method, num_classes=3, **OPTIONS.get(method, {}))
    randomize(model.task, std=0.05)  # zero-initialised factors would block the gradients of the others
    model.add_task("other", "adaptformer", classes=2, activate=False)
    model.train()
    model(images).sum().backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(name.startswith("tasks.default.") for name in trained)
    own = {f"tasks.default.{n}" for n, _ in model.task.named_parameters() if not n.startswith(("head.", "fc_norm"))}
    assert own and own <= trained


@pytest.mark.parametrize("method", NEW)
def test_task_files_round_trip(tmp_path, images, method):
    model = adapted(method)
    randomize(model.task)
    path = adaptformer.save_task(model, tmp_path / f"{method}.safetensors")
    loaded = adaptformer.apply_task(tiny_vit(), path).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_mixed_batches_of_every_method_equal_each_task_alone():
    model = adapted("adaptformer", bottleneck=4)
    names = ["default"]
    for method in [*NEW, "lora", "vpt", "ssf"]:
        model.add_task(method, method, classes=2 + len(names) % 3, **OPTIONS.get(method, {}))
        names.append(method)
    model.eval()
    for seed, task in enumerate(model.tasks.values()):
        randomize(task, seed=seed)
    order = [*names, *reversed(names)]
    x = torch.randn(len(order), 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mixed = model(x, tasks=order)
        for i, name in enumerate(order):
            alone = model(x[i : i + 1], task=name)[0]
            assert torch.allclose(mixed[i][: alone.shape[0]], alone, atol=1e-5), name


@pytest.mark.parametrize("method", MERGEABLE)
def test_merged_weights_equal_the_task(method, images):
    backbone = tiny_vit()
    model = adapted(method, copy.deepcopy(backbone))
    randomize(model.task, std=0.2)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    state = merged_state_dict(model)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())  # the model is unchanged
    merged = tiny_vit(num_classes=0)  # the adapted backbone's own head is gone: the task's head replaces it
    merged.load_state_dict(state, strict=True)
    assert torch.allclose(tokens(merged, images), tokens(model, images), atol=1e-5)


@pytest.mark.parametrize("method", NOT_MERGEABLE)
def test_methods_that_cannot_merge_say_why_in_one_line(method):
    model = adapted(method)
    with pytest.raises(AdaptFormerError, match=f"method {method} cannot be merged: ") as caught:
        merged_state_dict(model)
    assert "\n" not in str(caught.value)


def test_hugging_face_vit_hosts_the_new_methods(images):
    x = torch.randn(2, 3, 32, 32)
    plain = tiny_hf_vit()(pixel_values=x).last_hidden_state[:, 0]
    for method in NEW:
        model = adaptformer.adapt(tiny_hf_vit(), method, num_classes=3, **OPTIONS.get(method, {})).eval()
        with torch.no_grad():
            start = model.pooled_features(x)
        assert torch.allclose(start, plain, atol=1e-5 if method in EXACT_START else 0.1), method
        randomize(model.task, std=0.2)
        with torch.no_grad():
            assert not torch.allclose(model.pooled_features(x), start, atol=1e-4), method


def test_vit_b16_parameter_counts():
    import timm

    backbone = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    d, depth, r = 768, 12, 8
    expected = {
        "adapterplus": depth * (2 * d * r + r + d + d),  # Down, Up (+ biases), the channel scale
        "houlsby": depth * 2 * (2 * d * r + r + d),
        "pfeiffer": depth * (2 * d * r + r + d + 2 * d),  # + the adapter's LayerNorm
        "lntune": depth * 2 * 2 * d,
        "repadapter": depth * 2 * (d * r + r + d * r // 2 + d),
        "fact-tt": 2 * d * r + depth * 12 * r * r,
        "dora": depth * (r * d + 3 * d * r + 3 * d),  # A, B on qkv + a magnitude per output
        "convpass": depth * 2 * (d * r + r + r * r * 9 + r + r * d + d),  # 0.33 M, the Convpass paper's figure
    }
    model = adaptformer.adapt(backbone, "linear", num_classes=100)
    for method, count in expected.items():
        model.add_task(method, method, classes=100, activate=False)
        assert model.parameter_report(method).adapters == count, method


def test_a_bf16_task_store_serves_every_method_and_its_norms(tmp_path):
    """Tasks resident in bf16 under autocast: a LayerNorm the task owns (AdaptFormer's, Pfeiffer's) computes in
    its input's precision (it failed with "mixed dtype" before), and every method answers as in fp32 within
    bf16 rounding, alone and in one mixed batch."""
    from adaptformer.bank import TaskBank

    model = adapted("linear")
    generator = torch.Generator().manual_seed(0)
    kinds = {"adaptformer_in": ("adaptformer", {"layernorm": "in"}), **{m: (m, OPTIONS.get(m, {})) for m in NEW}}
    for name, (method, options) in kinds.items():
        task = model.add_task(name, method, classes=3, **options)
        with torch.no_grad():
            for param in task.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
        adaptformer.save_task(model, tmp_path / f"{name}.safetensors", task=name)
    x = torch.rand(2, 3, 32, 32, generator=generator)
    answers = {}
    for precision in ("fp32", "bf16"):
        bank = TaskBank(adaptformer.AdaptedModel(tiny_vit()), torch.device("cpu"), precision, task_dir=tmp_path)
        bank.refresh()
        rows = bank.predict_images([_image(x[0])])
        alone = {name: bank.predict_images([_image(x[0])], [name])[0] for name in kinds}
        tolerance = 1e-5 if precision == "fp32" else 0.02  # bf16 kernels round by batch (README: batch dependence)
        for row in rows:
            expected = {p["label"]: p["prob"] for p in alone[row["task"]]["top_k"]}
            assert all(abs(p["prob"] - expected[p["label"]]) <= tolerance for p in row["top_k"]), row["task"]
        answers[precision] = {row["task"]: {p["label"]: p["prob"] for p in row["top_k"]} for row in rows}
    for name in kinds:
        for label, probability in answers["fp32"][name].items():
            assert abs(answers["bf16"][name][label] - probability) < 0.05, name


def _image(tensor):
    from PIL import Image

    return Image.fromarray((tensor.permute(1, 2, 0).numpy() * 255).astype("uint8"))
