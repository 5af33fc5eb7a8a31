"""Gradient checkpointing of an adapted model's blocks: each block's activations are recomputed in the backward
pass instead of stored, the task's own modules with them.

A checkpointed block's ``forward`` runs under ``torch.utils.checkpoint`` (non-reentrant: gradients reach the
task's tensors although the block's input and weights need none). The hooks that run a task inside a block (the
adapter beside its MLP, LoRA/BitFit/SSF on its operations, prompts counted by a rotary attention) fire inside that
``forward``, so they run again when the block is recomputed and their activations are not kept either; where x'
is the block's own input (ConvNeXt), the hook that reads it runs again inside too. The other hooks on the block
itself (prompts in and out) run outside it, once. Works the same for every backbone (timm, Hugging
Face, a found one), whatever checkpointing the backbone offers itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class CheckpointedForward:
    """A block's ``forward``, recomputed in the backward pass when gradients are being recorded. ``inside``: the
    block's own pre-hooks that must run again when it is recomputed (a hook that reads the block's input as x')."""

    def __init__(self, block: nn.Module, forward: Callable):
        self.block = block
        self.forward = forward
        self.inside = [h for h in block._forward_pre_hooks.values() if getattr(h, "reads_block_input", False)]

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.forward(*args, **kwargs)
        return checkpoint(self._run, *args, use_reentrant=False, **kwargs)

    def _run(self, *args, **kwargs):
        for hook in self.inside:
            hook(self.block, args, kwargs)
        return self.forward(*args, **kwargs)


def checkpoint_blocks(blocks: Iterable[nn.Module], enable: bool = True) -> None:
    """Turn checkpointing on (or off) for each block (idempotent)."""
    for block in blocks:
        wrapped = block.__dict__.get("forward")
        if enable and not isinstance(wrapped, CheckpointedForward):
            block.forward = CheckpointedForward(block, block.forward)
        elif not enable and isinstance(wrapped, CheckpointedForward):
            del block.forward


def is_checkpointed(block: nn.Module) -> bool:
    return isinstance(block.__dict__.get("forward"), CheckpointedForward)
