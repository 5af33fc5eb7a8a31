import math

import pytest
import torch

from adaptformer import AdaptFormerConfig, AdaptFormerError, AdaptMLP


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(bottleneck=0), "bottleneck"),
        (dict(bottleneck=2.5), "bottleneck"),
        (dict(scale="big"), "scale"),
        (dict(scale=float("nan")), "scale"),
        (dict(layernorm="middle"), "layernorm"),
        (dict(init="xavier"), "init"),
        (dict(placement="beside"), "placement"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
    ],
)
def test_config_rejects_bad_values_with_the_option_named(options, message):
    with pytest.raises(AdaptFormerError, match=message):
        AdaptFormerConfig(**options)


def test_lora_init_gives_zero_output_and_reference_names():
    adapter = AdaptMLP(16, AdaptFormerConfig(bottleneck=4))
    assert set(dict(adapter.named_parameters())) == {
        "down_proj.weight",
        "down_proj.bias",
        "up_proj.weight",
        "up_proj.bias",
    }
    assert torch.count_nonzero(adapter.down_proj.weight) > 0
    assert torch.equal(adapter(torch.randn(3, 7, 16)), torch.zeros(3, 7, 16))
    bound = math.sqrt(6 / ((1 + 5) * 16))  # kaiming_uniform(a=sqrt(5)) bound for fan_in 16
    assert adapter.down_proj.weight.abs().max() <= bound


def test_kaiming_normal_init_has_larger_spread_than_lora():
    torch.manual_seed(0)
    lora = AdaptMLP(256, AdaptFormerConfig(bottleneck=64, init="lora"))
    normal = AdaptMLP(256, AdaptFormerConfig(bottleneck=64, init="kaiming_normal"))
    assert normal.down_proj.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert lora.down_proj.weight.std() < normal.down_proj.weight.std()
    assert torch.count_nonzero(normal.up_proj.weight) == 0


@pytest.mark.parametrize("layernorm", ["in", "out"])
def test_layernorm_option_adds_reference_named_norm(layernorm):
    adapter = AdaptMLP(8, AdaptFormerConfig(bottleneck=2, layernorm=layernorm))
    assert "adapter_layer_norm_before.weight" in dict(adapter.named_parameters())


def test_learnable_scale_is_a_parameter_initialised_to_one():
    adapter = AdaptMLP(8, AdaptFormerConfig(bottleneck=2, scale="learnable"))
    assert isinstance(adapter.scale, torch.nn.Parameter)
    assert adapter.scale.item() == 1.0
    fixed = AdaptMLP(8, AdaptFormerConfig(bottleneck=2, scale=0.5))
    assert fixed.scale == 0.5 and "scale" not in dict(fixed.named_parameters())


def test_forward_matches_the_formula_with_dropout_only_in_training():
    torch.manual_seed(0)
    adapter = AdaptMLP(8, AdaptFormerConfig(bottleneck=3, scale=0.3, dropout=0.5))
    torch.nn.init.normal_(adapter.up_proj.weight)
    x = torch.randn(2, 5, 8)
    expected = 0.3 * adapter.up_proj(torch.relu(adapter.down_proj(x)))
    adapter.eval()
    torch.testing.assert_close(adapter(x), expected, rtol=0, atol=1e-6)
    adapter.train()
    assert not torch.allclose(adapter(x), expected)


@pytest.mark.parametrize("bf16", [False, True])
def test_joining_the_mlp_branch_equals_the_sum_with_or_without_a_graph(bf16):
    """``add_to``: m + a in one product; without a graph (serving) it accumulates into m itself."""
    torch.manual_seed(0)
    adapter = AdaptMLP(16, AdaptFormerConfig(bottleneck=4, scale=0.3)).eval()
    torch.nn.init.normal_(adapter.up_proj.weight)
    torch.nn.init.normal_(adapter.up_proj.bias)
    x, m = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        expected = (m.to(torch.bfloat16) if bf16 else m) + adapter(x)  # the branch alone, then the sum
        with_graph = adapter(x, add_to=m.to(torch.bfloat16) if bf16 else m.clone())
        branch = m.to(torch.bfloat16) if bf16 else m.clone()
        with torch.no_grad():
            served = adapter(x, add_to=branch)
    assert with_graph.requires_grad and not served.requires_grad
    assert served.data_ptr() == branch.data_ptr()  # accumulated in place: no copy of the (tokens x d) branch
    assert torch.equal(served, with_graph.detach())
    tolerance = 0.05 if bf16 else 1e-5
    assert torch.allclose(served.float(), expected.detach().float(), atol=tolerance, rtol=tolerance)
