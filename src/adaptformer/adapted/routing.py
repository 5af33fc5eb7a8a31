"""The router the block hooks ask: which task's modules run on which samples, for one task or many in a batch.

A :class:`Router` holds the batch's task groups. A single-task forward is a batch of one group (the whole batch):
every hook point goes straight to that task's own method, so the single-task path is exactly the task's own
computation (and traces into one graph under ``torch.compile``). A mixed batch has several groups:

* **Prompts.** Prompt tokens differ between tasks (VPT or not, more or fewer tokens, deep or shallow), so before a
  block every sample gets the same number of prefix slots: its own prompts, then zero padding. Padded slots are
  masked out as attention keys (an attention mask passed to the block), so no real token attends to them. Prefix
  segments are dropped after the block their prompts belong to (deep, kv) or after the last block (shallow). A
  ``kv`` task's slots hold placeholders whose keys and values it writes at the attention's input projection.
* **The MLP branch.** Below ``gather_from`` groups holding an adapter at the block, each task's branch runs on
  its own rows (``index_select`` in, ``index_copy`` out). From there on, the tasks' adapters are packed
  (``Task.packed_branch``: Down, Up and biases, smaller bottlenecks padded with zeros) and gathered per sample,
  and the whole batch runs as two batched matrix products (``torch.baddbmm``): no Python loop of small matrix
  products per group. Tasks whose branch cannot be packed run on their rows as before.
* **Operations' outputs** (LoRA, BitFit, SSF): each task that modulates an operation (``qkv``, ``fc1``, ...)
  runs on its own rows (``index_select`` in, ``index_copy`` out); rows of other tasks pass unchanged.
* **Heads.** Each group's head is reduced to its BatchNorm statistics and Linear weights, padded to the largest
  class count and gathered per sample: one batched product for the batch; each sample's logits are trimmed to
  its task's classes.

Every sample's outputs equal what its task's own model computes (tested to 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import AdaptFormerError
from ..methods.base import PackedBranch, PackedHead, Task
from .taps import write_key_value_prefix

#: groups with an adapter at a block from which the gathered (batched-matmul) path runs instead of one small
#: matrix product per group. Measured on ViT-B/16, batch 32 (``benchmarks/multitask.py``, README): the gathered
#: path was as fast as the per-group one at 2, 4 and 8 tasks (within the ±2 % noise) and 9 % faster at 32, so
#: every mixed batch gathers; ``AdaptedModel.gather_from`` changes it per model (e.g. for a GPU measured otherwise)
GATHER_FROM_GROUPS = 2


@dataclass
class _Segment:
    """Prefix tokens prepended before some block: one slot count for all, valid slots per sample."""

    length: int
    valid: torch.Tensor  # (B, length) bool
    drop_after: int
    padded: bool  # some sample has fewer real slots than ``length`` (known without looking at tensors)


@dataclass
class _Group:
    task: Task
    rows: torch.Tensor | None  # sample indices; None: the whole batch (a single-task forward)


class Router:
    """One forward's routing of samples to tasks (see the module docstring)."""

    def __init__(self, groups: list[_Group], depth: int, batch: int | None = None, sample_groups: list[int] = ()):
        self.groups = groups
        self.depth = depth
        self.batch = batch
        self.sample_groups = list(sample_groups)  # group of each sample, as Python ints (mixed batches)
        self.single = len(groups) == 1 and groups[0].rows is None
        self.segments: list[_Segment] = []  # front of the sequence first
        self.gather_from = GATHER_FROM_GROUPS
        self._index: torch.Tensor | None = None
        #: sample i is group i (every sample its own task, in order): the stacked tensors need no indexing
        self._one_group_per_sample = list(sample_groups) == list(range(len(groups))) and len(groups) > 1

    @classmethod
    def for_task(cls, task: Task | None, depth: int) -> Router:
        """The router of a single-task forward (``task`` None: the plain backbone)."""
        return cls([_Group(task, None)] if task is not None else [], depth)

    @classmethod
    def for_batch(cls, tasks: list[Task], assignment: list[int], depth: int, device: torch.device) -> Router:
        """Sample i runs through ``tasks[assignment[i]]``."""
        index = torch.tensor(assignment, device=device)
        groups = [_Group(task, (index == k).nonzero().flatten()) for k, task in enumerate(tasks)]
        return cls(groups, depth, len(assignment), assignment)

    # ---- prompts ---------------------------------------------------------------------------------------------
    def before_block(self, index: int, x: torch.Tensor, block_accepts_mask: bool):
        """(x with this block's prompts prepended, an attention mask over keys or None)."""
        if self.single:
            return self.groups[0].task.before_block(index, x), None
        new: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # drop_after -> [(rows, prompt)]
        for group in self.groups:
            span = group.task.prompt_span(index, self.depth)
            if span is not None:
                prompt, drop_after = span
                new.setdefault(drop_after, []).append((group.rows, prompt))
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
        covered = sum(len(rows) for rows, _ in prompts)
        padded = covered < self.batch or any(p.shape[1] < length for _, p in prompts)
        self.segments.insert(0, _Segment(length, valid, drop_after, padded))
        return torch.cat([slots, x], dim=1)

    def _key_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        if not any(s.padded for s in self.segments):
            return None  # no padding: nothing to hide
        prefix = torch.cat([s.valid for s in self.segments], dim=1)
        rest = torch.ones(self.batch, x.shape[1] - prefix.shape[1], dtype=torch.bool, device=x.device)
        return torch.cat([prefix, rest], dim=1)[:, None, None, :]  # (B, 1, 1, N): keys to attend to

    def attention_qkv(self, index: int, qkv: torch.Tensor) -> torch.Tensor:
        # a key/value prefix sits in the segment added before this block, which is dropped after it and so is
        # at the front; each task's slots come first within the segment (padding after them)
        for group in self.groups:
            prefix = group.task.key_value_prefix(index)
            if prefix is not None:
                qkv = write_key_value_prefix(qkv, *prefix, rows=group.rows)
        return qkv

    def site_output(self, index: int, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """An operation's output through each task that modulates it, on that task's rows."""
        if self.single:
            return self.groups[0].task.site_output(index, site, x, out)
        for group in self.groups:
            if group.task.modulates(index, site):
                rows = self._rows_in(group.rows, x.shape[0])
                part = group.task.site_output(index, site, x.index_select(0, rows), out.index_select(0, rows))
                out = out.index_copy(0, rows, part)
        return out

    def _rows_in(self, rows: torch.Tensor, leading: int) -> torch.Tensor:
        """A group's rows in a tensor of ``leading`` rows: the batch's, or k per sample laid out sample-major
        (Swin's attention runs on the windows of each image, ``window_partition`` keeps them per sample)."""
        if leading == self.batch:
            return rows
        if leading % self.batch:
            raise AdaptFormerError(f"an operation's input has {leading} rows for a batch of {self.batch} samples")
        per = leading // self.batch
        return (rows[:, None] * per + torch.arange(per, device=rows.device)).flatten()

    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.single:
            return self.groups[0].task.after_block(index, x)
        while self.segments and self.segments[0].drop_after == index:
            x = x[:, self.segments.pop(0).length :]
        return x

    # ---- the MLP branch --------------------------------------------------------------------------------------
    def wants_residual(self, index: int) -> bool:
        return any(group.task.wants_residual(index) for group in self.groups)

    def mlp_branch(self, index: int, m: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        if self.single:
            return self.groups[0].task.mlp_branch(index, m, residual)
        if (
            self.groups and m.shape[0] != self.batch
        ):  # k rows per sample (windows), laid out sample by sample: k·N tokens each
            if m.shape[0] % self.batch:
                raise AdaptFormerError(f"an MLP branch has {m.shape[0]} rows for a batch of {self.batch} samples")
            per_sample = lambda t: t.reshape(self.batch, -1, t.shape[-1])  # noqa: E731
            out = self.mlp_branch(index, per_sample(m), per_sample(residual) if residual is not None else None)
            return out.reshape(m.shape)
        packed: dict[int, PackedBranch] = {}
        own: list[_Group] = []
        for k, group in enumerate(self.groups):
            branch = group.task.packed_branch(index)
            if branch is PackedBranch.UNPACKED:
                own.append(group)
            elif branch is not None:
                packed[k] = branch
        out = m
        one_width = residual is None or residual.shape[-1] == m.shape[-1]  # else x' and m cannot share a stack
        if len(packed) >= self.gather_from and one_width and not any(self.groups[k].task.training for k in packed):
            out = self._gathered(packed, m, residual)
        else:
            own += [self.groups[k] for k in packed]
        for group in own:
            rows = group.rows
            part = group.task.mlp_branch(
                index, m.index_select(0, rows), residual.index_select(0, rows) if residual is not None else None
            )
            out = out.index_copy(0, rows, part)
        return out

    def _gathered(self, packed: dict[int, PackedBranch], m: torch.Tensor, residual: torch.Tensor | None):
        """m + s·Up(ReLU(Down(input))) for every sample with its own task's packed adapter, in two ``baddbmm``
        (samples whose task has no packed adapter here get zero weights: their m is returned unchanged). The
        groups' tensors are stacked once per block (a handful of operations, whatever the number of tasks) and
        indexed by sample."""
        width = max(b.width for b in packed.values())
        dtype = m.dtype if not torch.is_autocast_enabled(m.device.type) else torch.get_autocast_dtype(m.device.type)
        source = self._inputs(packed, m, residual)
        branches = [packed.get(k) for k in range(len(self.groups))]
        if any(b is None for b in branches):
            zero = PackedBranch.zeros(source.shape[-1], m.shape[-1], width, dtype, m.device)
            branches = [zero if b is None else b for b in branches]
        branches = [b.padded(width) for b in branches]
        index = self._sample_index(m.device)

        def stacked(field: str) -> torch.Tensor:
            """The groups' ``field`` stacked, cast once (not once per task), one row per sample."""
            values = torch.stack([getattr(b, field) for b in branches]).to(dtype)
            return values if self._one_group_per_sample else values[index]

        down, down_bias = stacked("down"), stacked("down_bias")[:, None]  # (B, r, d), (B, 1, r)
        up = torch.cat([stacked("up_bias")[:, :, None], stacked("up")], dim=2)  # (B, d, 1 + r): [b | W]
        hidden = torch.baddbmm(down_bias.to(source.dtype), source, down.transpose(1, 2).to(source.dtype)).relu_()
        hidden = F.pad(hidden, (1, 0), value=1.0)  # the bias column of Up
        scales = {b.scale for b in packed.values()}
        alpha = 1.0
        if len(scales) == 1 and not isinstance(next(iter(scales)), torch.Tensor):
            alpha = scales.pop()  # one fixed scale for all (the usual case): applied by the product itself
        else:
            per_group = torch.stack([torch.as_tensor(b.scale, device=m.device).reshape(()) for b in branches])
            hidden = hidden * per_group.to(hidden.dtype)[index][:, None, None]
        hidden, up = hidden.to(m.dtype), up.transpose(1, 2).to(m.dtype)
        if not torch.is_grad_enabled() and m.is_contiguous():
            return m.baddbmm_(hidden, up, alpha=alpha)  # serving: into the branch's own tensor, sparing a copy
        return torch.baddbmm(m, hidden, up, alpha=alpha)

    def _sample_index(self, device: torch.device) -> torch.Tensor:
        """Each sample's group as a tensor (made once per forward)."""
        if self._index is None or self._index.device != device:
            self._index = torch.tensor(self.sample_groups, device=device)
        return self._index

    def _inputs(self, packed: dict[int, PackedBranch], m: torch.Tensor, residual: torch.Tensor | None):
        """Each sample's adapter input: x' (parallel) or m (sequential), layer-normalised where its task asks."""
        kinds = {b.input_kind for b in packed.values()}

        def variant(source: str, eps: float | None) -> torch.Tensor:
            x = residual if source == "residual" else m
            return F.layer_norm(x, x.shape[-1:], eps=eps) if eps is not None else x

        if len(kinds) == 1:
            return variant(*kinds.pop())
        inputs = m
        for kind in kinds:
            rows = torch.cat([self.groups[k].rows for k, b in packed.items() if b.input_kind == kind])
            inputs = inputs.index_copy(0, rows, variant(*kind).index_select(0, rows))
        return inputs

    # ---- heads -----------------------------------------------------------------------------------------------
    def heads(self, pooled: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every sample by its task's head, trimmed to that task's classes."""
        heads = [group.task.packed_head() for group in self.groups] if len(self.groups) >= self.gather_from else []
        if not heads or any(h is None for h in heads):
            logits: list[torch.Tensor | None] = [None] * self.batch
            for group in self.groups:
                values = group.task.forward_head(pooled.index_select(0, group.rows))
                for row, value in zip(group.rows.tolist(), values.unbind(0), strict=True):
                    logits[row] = value
            return logits
        return self._gathered_heads(pooled, heads)

    def _gathered_heads(self, pooled: torch.Tensor, heads: list[PackedHead]) -> list[torch.Tensor]:
        with torch.autocast(pooled.device.type, enabled=False):  # in the heads' precision, as a task alone
            return self._stacked_heads(pooled.to(heads[0].weight.dtype), heads)

    def _stacked_heads(self, pooled: torch.Tensor, heads: list[PackedHead]) -> list[torch.Tensor]:
        classes = max(h.weight.shape[0] for h in heads)
        index = self._sample_index(pooled.device)
        x = pooled
        if heads[0].norm_weight is not None:  # every task on one backbone has fc_norm, or none has
            x = F.layer_norm(x, x.shape[-1:], eps=heads[0].norm_eps)
            x = (
                x * torch.stack([h.norm_weight for h in heads])[index]
                + torch.stack([h.norm_bias for h in heads])[index]
            )
        x = (x - torch.stack([h.mean for h in heads])[index]) * torch.stack([h.inv_std for h in heads])[index]
        weight = torch.stack([F.pad(h.weight, (0, 0, 0, classes - h.weight.shape[0])) for h in heads])[index]
        bias = torch.stack([F.pad(h.bias, (0, classes - h.bias.shape[0])) for h in heads])[index]
        logits = torch.baddbmm(bias[:, None].to(x.dtype), x[:, None], weight.transpose(1, 2).to(x.dtype))[:, 0]
        counts = [heads[g].weight.shape[0] for g in self.sample_groups]
        return [row[:n] for row, n in zip(logits.unbind(0), counts, strict=True)]
