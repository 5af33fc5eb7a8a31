"""The classification head every method trains (reference code, after MoCo v3's linear probe).

``head = Sequential(BatchNorm1d(d, affine=False, eps=1e-6), Linear(d, classes))``: the parameter-free
BatchNorm whitens frozen features so one learning rate suits every backbone. Keys are ``head.0.*`` (running
statistics) and ``head.1.{weight,bias}``, as in reference checkpoints.
"""

from __future__ import annotations

from torch import nn
from torch.nn.init import trunc_normal_


def make_head(dim: int, num_classes: int, batchnorm: bool = True) -> nn.Module:
    linear = nn.Linear(dim, num_classes)
    trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    if not batchnorm:
        return linear
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def head_linear(head: nn.Module) -> nn.Linear:
    """The Linear layer of a head made by :func:`make_head`."""
    return head[-1] if isinstance(head, nn.Sequential) else head
