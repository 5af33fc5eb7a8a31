"""Where a task plugs into a real transformer block (timm's, or a Hugging Face layer), without copying or
re-implementing the block.

timm's pre-norm ``Block`` computes ``x' = x + attn-branch`` then ``y = x' + drop_path2(ls2(mlp(norm2(x'))))``;
each family declares which of its block's modules take x' and give m (``families.py``: ``BlockAnatomy``).
Hooks on the block's own modules give a task every point it needs:

* a forward pre-hook on the block: its input (VPT prepends prompts);
* a forward pre-hook on ``norm2`` (the family's ``residual_at``): x', the post-attention residual (the parallel
  adapter's input);
* a forward hook on ``drop_path2`` (``branch_at``): m, the MLP branch after DropPath (AdaptFormer returns m + a);
* a forward hook on the block: its output (VPT drops the prompts);
* timm blocks only: a forward hook on ``attn.qkv``, the fused [queries | keys | values] projection, where VPT's
  ``kv`` mode writes learned keys and values over its prefix slots (``write_key_value_prefix``);
* timm blocks only: a forward hook on each of the block's operations (``SITES``: ``qkv``, ``proj``, ``fc1``,
  ``fc2``, ``norm1``, ``norm2``), whose output a task may change given its input (LoRA adds ``B A x``, BitFit a
  bias, SSF a scale and shift).

Each hook asks its router (the host model) for the task to run, so one backbone serves many tasks. The hooks
keep no per-thread state and call only plain Python, so ``torch.compile`` traces them with no graph break. The
x' captured at ``norm2`` is held on the hook object until ``drop_path2`` of the same block consumes it, so
one model instance runs one forward at a time (as with any module that keeps state between its sub-modules).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..backbones.families import SITES, Site
from ..errors import AdaptFormerError


class TaskRouter(Protocol):
    """What the hooks ask (the host model): it runs one task, or a mixed-task batch (``routing.py``)."""

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
    """Pre-hook (with keyword arguments) on the block: its input, and an attention mask when one is needed."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        return self.router.before_block(self.index, module, args, kwargs)


class AfterBlock(BlockTap):
    def __call__(self, module: nn.Module, args: tuple, output):
        if isinstance(output, tuple):  # layers that also return attentions
            return (self.router.after_block(self.index, output[0]), *output[1:])
        return self.router.after_block(self.index, output)


class CaptureResidual(BlockTap):
    """Pre-hook on the module whose input is x' (``norm2``): keep x' when the MLP branch will need it, and
    mark that the MLP branch has begun (where one module ends both branches, its next call is the MLP's)."""

    def __init__(self, router: TaskRouter, index: int):
        super().__init__(router, index)
        self.residual: torch.Tensor | None = None
        self.armed = False

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.armed = True
        if self.router.wants_residual(self.index):
            self.residual = args[0]


class AdaptMLPBranch(BlockTap):
    """Forward hook on the module whose output is the MLP branch m (``drop_path2``): m -> the task's branch."""

    def __init__(self, router: TaskRouter, index: int, capture: CaptureResidual, shared: bool = False):
        super().__init__(router, index)
        self.capture = capture
        self.shared = shared  # the module also ends the attention branch: act only after x' was seen

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.shared and not self.capture.armed:
            return output
        self.capture.armed = False
        residual = self.capture.residual
        self.capture.residual = None  # release x' at once: nothing keeps activations alive between forwards
        return self.router.mlp_branch(self.index, output, residual)


class KeyValuePrefix(BlockTap):
    """Forward hook on ``attn.qkv``: its output (B, L, 3A) -> the router's (prefix keys and values written in)."""

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.router.attention_qkv(self.index, output)


class SiteOutput(BlockTap):
    """Forward hook on one operation of a block (a ``SITES`` entry): its output -> the router's."""

    def __init__(self, router: TaskRouter, index: int, site: str):
        super().__init__(router, index)
        self.site = site

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.router.site_output(self.index, self.site, args[0], output)


def block_sites(block: nn.Module) -> dict[str, nn.Module]:
    """The block's ``SITES`` that are plain ``nn.Linear`` / ``nn.LayerNorm`` modules (timm blocks; none for
    Hugging Face layers, whose attention does not always call its projection modules)."""
    if not is_timm_block(block):
        return {}
    found = {}
    for name, path in SITES.items():
        module = block
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and (name != "qkv" or qkv_module_is_called(block)):
            found[name] = module
    return found


def sites_per_block(blocks: list[nn.Module]) -> tuple[dict[str, Site], ...]:
    """Each block's hookable operations with their shapes (what LoRA/BitFit/SSF size their tensors by; the
    shapes differ between the stages of a hierarchical model)."""
    return tuple({name: _site(name, module) for name, module in block_sites(block).items()} for block in blocks)


def _site(name: str, module: nn.Module) -> Site:
    if isinstance(module, nn.Linear):
        return Site(name, module.in_features, module.out_features, module.bias is not None)
    width = int(module.normalized_shape[-1])
    return Site(name, width, width, getattr(module, "bias", None) is not None)


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


def fused_qkv(block: nn.Module) -> nn.Linear | None:
    """timm's fused attention input projection (out = 3 x key width), or None for other attention layouts."""
    qkv = getattr(getattr(block, "attn", None), "qkv", None)
    ok = isinstance(qkv, nn.Linear) and qkv.out_features % 3 == 0 and qkv_module_is_called(block)
    return qkv if ok else None


def qkv_module_is_called(block: nn.Module) -> bool:
    """False where the attention uses ``attn.qkv``'s weight in ``F.linear`` with biases of its own and cannot be
    told otherwise, so hooks on ``attn.qkv`` would never run (where it can, :func:`call_qkv_module` switches it
    when the taps are installed)."""
    attn = getattr(block, "attn", None)
    return getattr(attn, "q_bias", None) is None or hasattr(attn, "qkv_bias_separate")


def key_value_dim(blocks: list[nn.Module]) -> int | None:
    """Key/value width of the blocks' attention when every block can take a key/value prefix, else None."""
    widths = {q.out_features // 3 if (q := fused_qkv(block)) is not None else None for block in blocks}
    return widths.pop() if len(widths) == 1 else None


def is_timm_block(block: nn.Module) -> bool:
    """timm blocks take an ``attn_mask`` keyword (mixed batches of different prompts need it)."""
    return isinstance(getattr(block, "norm2", None), nn.Module) and isinstance(getattr(block, "attn", None), nn.Module)


def is_tapped(block: nn.Module) -> bool:
    return any(isinstance(hook, BlockTap) for hook in block._forward_pre_hooks.values())


def call_qkv_module(block: nn.Module) -> None:
    """timm's Eva attention with separate q/v biases (EVA-02) computes ``F.linear(x, qkv.weight, bias)`` and so
    bypasses ``attn.qkv``'s hooks (kv prompts and LoRA/SSF on qkv would silently do nothing); its
    ``qkv_bias_separate`` mode calls ``attn.qkv`` and adds the biases after, the same sum."""
    attn = getattr(block, "attn", None)
    if getattr(attn, "q_bias", None) is not None and hasattr(attn, "qkv_bias_separate"):
        attn.qkv_bias_separate = True


def install_taps(blocks: list[nn.Module], anatomies: list, router: TaskRouter) -> None:
    """Hook every block once at the points its family declares (``families.BlockAnatomy``: x' enters
    ``residual_at``, m leaves ``branch_at``); a block hooked by another model is refused (it would run two tasks
    at once)."""
    if any(is_tapped(block) for block in blocks):
        raise AdaptFormerError(
            "this backbone already serves an adapted model; add tasks to that model (add_task) or adapt a "
            "fresh backbone"
        )
    for index, (block, anatomy) in enumerate(zip(blocks, anatomies, strict=True)):
        call_qkv_module(block)
        capture = CaptureResidual(router, index)
        block.register_forward_pre_hook(BeforeBlock(router, index), with_kwargs=True)
        anatomy.residual_at.register_forward_pre_hook(capture)
        anatomy.branch_at.register_forward_hook(AdaptMLPBranch(router, index, capture, anatomy.shared_branch))
        block.register_forward_hook(AfterBlock(router, index))
        for site, module in block_sites(block).items():  # before the kv prefix, which overwrites its slots
            module.register_forward_hook(SiteOutput(router, index, site))
        qkv = fused_qkv(block)
        if qkv is not None:
            qkv.register_forward_hook(KeyValuePrefix(router, index))
