"""What LoRA, BitFit and SSF share: a module per (block, operation) that rewrites the operation's output.

A :class:`SiteTask` keeps them at ``blocks.{i}.{site}`` (``site`` a name from ``backbones/anatomy.py``); each is
called as ``module(x, out)`` with the operation's input and output and returns the new output. Blocks or sites
without a module pass their output unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Task

#: every role an operation can have (``backbones/anatomy.Site.role``)
ALL_ROLES = ("attention_input", "attention_output", "mlp", "norm")


class SiteTask(Task):
    #: each module folds itself into the operation it follows (``fold``); a method whose modules cannot says so
    merge_refusal = None

    def merge_into(self, index: int, modules: dict[str, nn.Module]) -> None:
        for site, module in self.blocks[str(index)].items() if str(index) in self.blocks else ():
            module.fold(modules[site])

    def modulates(self, index: int, site: str) -> bool:
        key = str(index)
        return key in self.blocks and site in self.blocks[key]

    def site_output(self, index: int, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if not self.modulates(index, site):
            return out
        return self.blocks[str(index)][site](x, out)
