"""Where a task plugs into a real block (timm's, a Hugging Face layer, any model's), without copying or
re-implementing it.

The backbone's anatomy (``backbones/anatomy.py``: found by a probe, refined by a family) says, per block, which
module's input is the adapter's input (x', or the MLP's own input) and which module's output is m, the MLP branch;
the channel axis of those tensors; and the block's operations. Hooks on the block's own modules give a task every
point it needs:

* a forward pre-hook on the block: its input (VPT prepends prompts);
* a forward pre-hook on ``residual_at`` (timm's ``norm2``): x', the post-attention residual (the parallel
  adapter's input);
* a forward hook on ``branch_at`` (timm's ``drop_path2``): m, the MLP branch (AdaptFormer returns m + a);
* a forward hook on the block: its output (VPT drops the prompts);
* a forward hook on each of the block's operations (``qkv``, ``proj``, ``fc1``, ``fc2``, ``norm1``, ``norm2``,
  ...: ``BlockAnatomy.sites``), whose output a task may change given its input (LoRA adds ``B A x``, BitFit a
  bias, SSF a scale and shift); on a fused ``qkv``, VPT's ``kv`` mode writes learned keys and values over its
  prefix slots (``write_key_value_prefix``).

x' and m reach the router as (rows, tokens, channels) whatever the block's layout ((B, N, C), (B, H, W, C), or
(B, C, H, W) around a 1x1-convolution MLP) and go back in that layout. Each hook asks its router (the host model)
for the task to run, so one backbone serves many tasks. The hooks keep no per-thread state and call only plain
Python, so ``torch.compile`` traces them with no graph break. The x' captured at ``residual_at`` is held on the
hook object until ``branch_at`` of the same block consumes it, so one model instance runs one forward at a time
(as with any module that keeps state between its sub-modules).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..backbones.anatomy import Anatomy, BlockAnatomy, Site, first_tensor
from ..errors import AdaptFormerError


class TaskRouter(Protocol):
    """What the hooks ask (the host model): it runs one task, or a mixed-task batch (``routing.py``)."""

    plain_tokens: int  # the sequence length entering the first block, before any prompt

    def before_block(self, index: int, block: nn.Module, args: tuple, kwargs: dict): ...
    def wants_residual(self, index: int) -> bool: ...
    def mlp_branch(self, index: int, m: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor: ...
    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor: ...
    def attention_qkv(self, index: int, qkv: torch.Tensor) -> torch.Tensor: ...
    def site_output(self, index: int, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor: ...


class BlockTap:
    """Base of the hooks: knows its block index and its router."""

    def __init__(self, router: TaskRouter, index: int):
        self.router = router
        self.index = index


class BeforeBlock(BlockTap):
    """Pre-hook (with keyword arguments) on the block: its input, and an attention mask when one is needed. It
    also clears what the block's MLP-branch hooks hold, so a pass that stopped half-way (an exception, a module of
    the block called on its own) leaves nothing for the next one."""

    def __init__(self, router: TaskRouter, index: int, capture: CaptureResidual):
        super().__init__(router, index)
        self.capture = capture

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        self.capture.armed, self.capture.residual = False, None
        return self.router.before_block(self.index, module, args, kwargs)


class AfterBlock(BlockTap):
    def __call__(self, module: nn.Module, args: tuple, output):
        if isinstance(output, tuple):  # layers that also return attentions
            return (self.router.after_block(self.index, output[0]), *output[1:])
        return self.router.after_block(self.index, output)


class CaptureResidual(BlockTap):
    """Pre-hook on the module whose input is the adapter's input (``norm2``): keep it when the MLP branch will
    need it, and mark that the MLP branch has begun (where one module ends both branches, its next call is the
    MLP's)."""

    def __init__(self, router: TaskRouter, index: int, on_block: bool = False):
        super().__init__(router, index)
        self.residual: torch.Tensor | None = None
        self.armed = False
        self.reads_block_input = on_block  # a checkpointed block runs it again when it is recomputed

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.armed = True
        if self.router.wants_residual(self.index):
            self.residual = first_tensor(args) if args else first_tensor(kwargs)


class AdaptMLPBranch(BlockTap):
    """Forward hook on the module whose output is the MLP branch m (``drop_path2``): m -> the task's branch, with
    x' and m seen as (rows, tokens, channels)."""

    def __init__(self, router: TaskRouter, index: int, capture: CaptureResidual, part: BlockAnatomy):
        super().__init__(router, index)
        self.capture = capture
        self.shared = part.shared_branch  # the module also ends the attention branch: act only after x' was seen
        self.residual_axis, self.branch_axis = part.residual_axis, part.branch_axis

    def __call__(self, module: nn.Module, args: tuple, output):
        if self.shared and not self.capture.armed:
            return output
        self.capture.armed = False
        residual = self.capture.residual
        self.capture.residual = None  # release x' at once: nothing keeps activations alive between forwards
        m = output[0] if isinstance(output, tuple) else output
        tokens, back = as_tokens(m, self.branch_axis)
        if residual is not None:
            residual = as_tokens(residual, self.residual_axis)[0]
        out = back(self.router.mlp_branch(self.index, tokens, residual))
        return (out, *output[1:]) if isinstance(output, tuple) else out


def as_tokens(x: torch.Tensor, axis: int):
    """``x`` as (rows, tokens, channels), the channels taken from ``axis``, and the function that puts a tensor of
    that shape back in ``x``'s layout (views where the layout allows)."""
    if axis == -1 and x.ndim == 3:
        return x, _same
    moved = x if axis == -1 else x.movedim(axis, -1)
    shape = moved.shape
    tokens = moved.reshape(shape[0], -1, shape[-1])
    if axis == -1:
        return tokens, lambda t: t.reshape(shape)
    # back in x's own layout, contiguous as it was: the layers after the block see the memory format they expect
    return tokens, lambda t: t.reshape(shape).movedim(-1, axis).contiguous()


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


class PromptsAsPrefix(BlockTap):
    """Pre- and forward hook on a rotary attention (timm's Eva: EVA-02, RoPE ViTs), which rotates every token after
    its ``num_prefix_tokens``: while prompts are in the sequence they count as prefix tokens, and the count is
    restored after. Inside the block's forward, so a recomputed (checkpointed) block counts them again."""

    def __init__(self, router: TaskRouter, index: int, base: int):
        super().__init__(router, index)
        self.base = base

    def before(self, module: nn.Module, args: tuple) -> None:
        module.num_prefix_tokens = self.base + args[0].shape[1] - self.router.plain_tokens

    def after(self, module: nn.Module, args: tuple, output) -> None:
        module.num_prefix_tokens = self.base


class KeyValuePrefix(BlockTap):
    """Forward hook on ``attn.qkv``: its output (B, L, 3A) -> the router's (prefix keys and values written in)."""

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.router.attention_qkv(self.index, output)


class SiteOutput(BlockTap):
    """Forward hook on one operation of a block (a ``BlockAnatomy.sites`` entry): its output -> the router's."""

    def __init__(self, router: TaskRouter, index: int, site: str):
        super().__init__(router, index)
        self.site = site

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.router.site_output(self.index, self.site, args[0], output)


def sites_per_block(anatomy: Anatomy) -> tuple[dict[str, Site], ...]:
    """Each block's hookable operations with their shapes (what LoRA/BitFit/SSF size their tensors by; the
    shapes differ between the stages of a hierarchical model)."""
    return tuple(dict(part.shapes) for part in anatomy.parts)


def write_key_value_prefix(
    qkv: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``qkv`` (B, L, 3A) with the keys and values of its first N tokens replaced by ``keys`` / ``values``
    ((1, N, A) each), for the samples ``rows`` (all when None). Their queries are left alone: those slots'
    outputs are dropped after the block, so the learned keys and values act only as keys and values."""
    count, width = keys.shape[1], keys.shape[2]
    head = qkv[:, :count]
    chosen = head if rows is None else head.index_select(0, rows)
    prefix = torch.cat([keys, values], dim=-1).to(qkv.dtype).expand(len(chosen), -1, -1)
    written = torch.cat([chosen[..., :width], prefix], dim=-1)
    head = written if rows is None else head.index_copy(0, rows, written)
    return torch.cat([head, qkv[:, count:]], dim=1)


def fused_qkv(part: BlockAnatomy) -> nn.Linear | None:
    """The block's fused attention input projection (out = 3 x key width), or None for other layouts."""
    qkv, shape = part.sites.get("qkv"), part.shapes.get("qkv")
    return qkv if isinstance(qkv, nn.Linear) and shape.out_features % 3 == 0 else None


def key_value_dim(anatomy: Anatomy) -> int | None:
    """Key/value width of the blocks' attention when every block can take a key/value prefix, else None."""
    widths = {q.out_features // 3 if (q := fused_qkv(part)) is not None else None for part in anatomy.parts}
    return widths.pop() if len(widths) == 1 else None


def is_tapped(block: nn.Module) -> bool:
    return any(isinstance(hook, BlockTap) for hook in block._forward_pre_hooks.values())


def install_taps(anatomy: Anatomy, router: TaskRouter, rotary_prefix: int | None = None) -> None:
    """Hook every block once at the points its anatomy names (x' enters ``residual_at``, m leaves ``branch_at``,
    the operations in ``sites``); a block hooked by another model is refused (it would run two tasks at once).
    ``rotary_prefix``: the backbone's own prefix tokens, where its attention is rotary and must count prompts."""
    if any(is_tapped(block) for block in anatomy.blocks):
        raise AdaptFormerError(
            "this backbone already serves an adapted model; add tasks to that model (add_task) or adapt a "
            "fresh backbone"
        )
    for index, (block, part) in enumerate(zip(anatomy.blocks, anatomy.parts, strict=True)):
        capture = CaptureResidual(router, index, on_block=part.residual_at is block)
        block.register_forward_pre_hook(BeforeBlock(router, index, capture), with_kwargs=True)
        part.residual_at.register_forward_pre_hook(capture, with_kwargs=True)
        part.branch_at.register_forward_hook(AdaptMLPBranch(router, index, capture, part))
        block.register_forward_hook(AfterBlock(router, index))
        for site, module in part.sites.items():  # before the kv prefix, which overwrites its slots
            module.register_forward_hook(SiteOutput(router, index, site))
        qkv = fused_qkv(part)
        if qkv is not None:
            qkv.register_forward_hook(KeyValuePrefix(router, index))
        attention = next((m for m in block.modules() if m is not block and hasattr(m, "num_prefix_tokens")), None)
        if rotary_prefix is not None and attention is not None:
            counter = PromptsAsPrefix(router, index, rotary_prefix)
            attention.register_forward_pre_hook(counter.before)
            attention.register_forward_hook(counter.after)
