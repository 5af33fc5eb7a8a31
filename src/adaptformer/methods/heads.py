"""The head every task trains (reference code, after MoCo v3's linear probe).

``TaskHead`` = optional trainable ``fc_norm`` (a copy of the backbone's, for mean-pooled backbones) followed by
``head = Sequential(BatchNorm1d(d, affine=False, eps=1e-6), Linear(d, classes))``. The parameter-free BatchNorm
whitens frozen features so one learning rate suits every backbone. Keys are ``fc_norm.*``, ``head.0.*``
(running statistics) and ``head.1.{weight,bias}``, as in reference checkpoints.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.init import trunc_normal_


def make_head(dim: int, num_classes: int, batchnorm: bool = True) -> nn.Module:
    linear = nn.Linear(dim, num_classes)
    trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    if not batchnorm:
        return linear
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


class TaskHead(nn.Module):
    """Pooled backbone features -> (fc_norm) -> BatchNorm -> Linear -> logits."""

    def __init__(self, dim: int, num_classes: int, fc_norm: nn.Module | None = None, batchnorm: bool = True):
        super().__init__()
        self.fc_norm = copy.deepcopy(fc_norm) if fc_norm is not None else None
        if self.fc_norm is not None:
            self.fc_norm.requires_grad_(True)
        self.head = make_head(dim, num_classes, batchnorm)

    def reset_head(self, num_classes: int) -> None:
        """A fresh head for ``num_classes`` classes on the same features (same device and dtype, trainable)."""
        linear = self.head[-1] if isinstance(self.head, nn.Sequential) else self.head
        batchnorm = isinstance(self.head, nn.Sequential)
        self.head = make_head(linear.in_features, num_classes, batchnorm).to(linear.weight.device, linear.weight.dtype)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        # the head runs in its weights' precision (fp32) even under bf16 autocast: its few operations cost
        # nothing, and an answer then moves with the batch it ran in only as much as the backbone's features do
        with torch.autocast(pooled.device.type, enabled=False):
            pooled = pooled.to(self.head_dtype)
            if self.fc_norm is not None:
                pooled = self.fc_norm(pooled)
            return self.head(pooled)

    @property
    def head_dtype(self) -> torch.dtype:
        linear = self.head[-1] if isinstance(self.head, nn.Sequential) else self.head
        return linear.weight.dtype
