"""Int8 weights of resident tasks (``store/int8_weights.py``): the rounding, its scales, the layer."""

import torch
import torch.nn.functional as F
from torch import nn

from adaptformer.store.int8_weights import Int8Linear, held_as_int8, int8_bytes, quantized, scale_shape


def test_each_value_is_rounded_to_within_half_a_step_of_the_scale_it_shares():
    generator = torch.Generator().manual_seed(0)
    for shape in [(6, 40), (40, 6), (7, 7), (1, 30), (30, 1), (1, 1)]:
        weight = torch.randn(shape, generator=generator) * torch.rand(shape[0], 1, generator=generator)
        values, scale = quantized(weight)
        assert values.dtype == torch.int8 and values.abs().max() == 127  # each group's largest value is +-127
        assert scale.shape == scale_shape(shape) and scale.numel() == min(shape)
        assert ((values.float() * scale - weight).abs() <= scale / 2 + 1e-7).all()
        assert int8_bytes(shape) == values.nbytes + scale.nbytes
    values, scale = quantized(torch.zeros(3, 5))
    assert not values.any() and (scale == 1).all()  # an all-zero group stays zeros, no division by zero


def test_only_weight_matrices_inside_the_blocks_are_held_as_int8():
    assert held_as_int8("blocks.3.adaptmlp.up_proj.weight", (768, 64))
    assert not held_as_int8("blocks.3.adaptmlp.up_proj.bias", (768,))
    assert not held_as_int8("blocks.3.adaptmlp.adapter_layer_norm_before.weight", (768,))
    assert not held_as_int8("head.1.weight", (10, 768))


def test_the_int8_layer_computes_with_its_rounded_weight_in_its_precision():
    linear = nn.Linear(12, 5)
    layer = Int8Linear(linear, torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    torch.testing.assert_close(
        layer.weight.float(), linear.weight.detach(), atol=float(linear.weight.abs().max()) / 100, rtol=0
    )
    x = torch.randn(3, 12)
    expected = F.linear(x, layer.weight.float(), layer.bias.float())
    torch.testing.assert_close(layer(x), expected)  # fp32 input, no autocast: computed in the input's precision
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    assert "int8" in repr(layer) and not layer.bias.requires_grad
