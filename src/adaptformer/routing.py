"""Mixed-task batches: every sample runs through its own task's modules in one pass of the shared backbone.

The backbone's own layers (patch embedding, attention, MLPs, norms) run once over the whole batch. At each hook
point the samples are split by task: an adapter runs on its task's rows only (``index_select`` in,
``index_copy`` out), a head on its task's pooled features. Prompt tokens differ between tasks (VPT or not, more
or fewer tokens, deep or shallow), so before a block every sample gets the same number of prefix slots: its own
prompts, then zero padding. Padded slots are masked out as attention keys (an attention mask passed to the
block), so no real token attends to them and every sample's outputs equal what its task's own model computes.
Prefix segments are dropped after the block their prompts belong to (deep, kv) or after the last block (shallow).
A ``kv`` task's slots hold placeholders whose keys and values it writes at the attention's input projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbones.taps import write_key_value_prefix
from .errors import AdaptFormerError
from .methods.base import Task


@dataclass
class _Segment:
    """Prefix tokens prepended before some block: one slot count for all, valid slots per sample."""

    length: int
    valid: torch.Tensor  # (B, length) bool
    drop_after: int


class MixedRouting:
    def __init__(self, tasks: list[Task], assignment: torch.Tensor, depth: int):
        self.depth = depth
        self.groups = [(tasks[k], (assignment == k).nonzero().flatten()) for k in range(len(tasks))]
        self.groups = [(task, rows) for task, rows in self.groups if len(rows)]
        self.batch = len(assignment)
        self.segments: list[_Segment] = []  # front of the sequence first

    # ---- prompts ---------------------------------------------------------------------------------------------
    def before_block(
        self, index: int, x: torch.Tensor, block_accepts_mask: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        new = {}  # drop_after -> list of (rows, prompt)
        for task, rows in self.groups:
            span = task.prompt_span(index, self.depth)
            if span is not None:
                prompt, drop_after = span
                new.setdefault(drop_after, []).append((rows, prompt))
        # segments that are dropped sooner go in front, so the front is always the next to drop
        for drop_after in sorted(new, reverse=True):
            x = self._prepend(x, new[drop_after], drop_after)
        mask = self._key_mask(x)
        if mask is not None and not block_accepts_mask:
            raise AdaptFormerError(
                "mixed batches of prompt tasks with different prompts need timm blocks (attention masks)"
            )
        return x, mask

    def _prepend(self, x: torch.Tensor, prompts: list[tuple[torch.Tensor, torch.Tensor]], drop_after: int):
        length = max(p.shape[1] for _, p in prompts)
        slots = x.new_zeros(self.batch, length, x.shape[-1])
        valid = torch.zeros(self.batch, length, dtype=torch.bool, device=x.device)
        for rows, prompt in prompts:
            n = prompt.shape[1]
            padding = x.new_zeros(len(rows), length - n, x.shape[-1])
            slots = slots.index_copy(0, rows, torch.cat([prompt.to(x.dtype).expand(len(rows), -1, -1), padding], dim=1))
            valid[rows, :n] = True
        self.segments.insert(0, _Segment(length, valid, drop_after))
        return torch.cat([slots, x], dim=1)

    def _key_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.segments or all(bool(s.valid.all()) for s in self.segments):
            return None  # no padding: nothing to hide
        prefix = torch.cat([s.valid for s in self.segments], dim=1)
        rest = torch.ones(self.batch, x.shape[1] - prefix.shape[1], dtype=torch.bool, device=x.device)
        return torch.cat([prefix, rest], dim=1)[:, None, None, :]  # (B, 1, 1, N): keys to attend to

    def attention_qkv(self, index: int, qkv: torch.Tensor) -> torch.Tensor:
        # a key/value prefix sits in the segment added before this block, which is dropped after it and so is
        # at the front; each task's slots come first within the segment (padding after them)
        for task, rows in self.groups:
            prefix = task.key_value_prefix(index)
            if prefix is not None:
                qkv = write_key_value_prefix(qkv, *prefix, rows=None if len(self.groups) == 1 else rows)
        return qkv

    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        while self.segments and self.segments[0].drop_after == index:
            x = x[:, self.segments.pop(0).length :]
        return x

    # ---- the MLP branch ----------------------------------------------------------------------------------------
    def wants_residual(self, index: int) -> bool:
        return any(task.wants_residual(index) for task, _ in self.groups)

    def mlp_branch(self, index: int, m: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        out = m
        for task, rows in self.groups:
            if len(self.groups) == 1:
                return task.mlp_branch(index, m, residual)
            part = task.mlp_branch(
                index, m.index_select(0, rows), residual.index_select(0, rows) if residual is not None else None
            )
            out = out.index_copy(0, rows, part)
        return out

    # ---- heads --------------------------------------------------------------------------------------------------
    def heads(self, pooled: torch.Tensor) -> list[torch.Tensor]:
        logits: list[torch.Tensor | None] = [None] * self.batch
        for task, rows in self.groups:
            for row, value in zip(rows.tolist(), task.forward_head(pooled.index_select(0, rows)), strict=True):
                logits[row] = value
        return logits
