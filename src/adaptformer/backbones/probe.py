"""The probe: one forward of the model itself, with hooks that record every call of a module inside each
candidate block (input, output, order); when a block returns it is read off those calls (``read_block``) and its
tensors are let go.

Reading a block: its MLP (the last one it runs on its tokens: the channel MLP of a token-mixing block); the output
of some module after the MLP's start is m and the block's output is exactly ``y = x' + m`` for x' the input of the
norm that feeds the MLP, of the MLP itself, or of the block (checked to a few ulps, in the block's own layout;
where m is all zeros, a zero-initialised post-norm, the block is run once more with a known change added at that
module, which must reach ``y`` unchanged); else the adapter goes beside the MLP module. Then the channel axes and
widths, and the operations (``anatomy.Site``) the block calls once on channels-last tokens.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .anatomy import BlockAnatomy, Site, first_tensor
from .mlps import MLP, mlp_widths

#: the operations LoRA/BitFit/SSF can modulate, by the names blocks give them -> the name a task uses
SITE_ALIASES = {
    "qkv": "qkv",
    "q": "q",
    "query": "q",
    "q_proj": "q",
    "k": "k",
    "key": "k",
    "k_proj": "k",
    "v": "v",
    "value": "v",
    "v_proj": "v",
    "kv": "kv",
    "proj": "proj",
    "out_proj": "proj",
    "o_proj": "proj",
    "norm1": "norm1",
    "layernorm_before": "norm1",
    "layer_norm1": "norm1",
    "ln_1": "norm1",
    "norm2": "norm2",
    "layernorm_after": "norm2",
    "layer_norm2": "norm2",
    "ln_2": "norm2",
}
#: the attention's input projections, whatever their layout (fused, separate, or q and kv)
ATTENTION_INPUTS = ("qkv", "q", "k", "v", "kv")


@dataclass(eq=False)  # compared by identity: their fields hold tensors
class _Call:
    """One call of a module while a block ran: its first input and output tensors, and when it began and ended."""

    module: nn.Module
    start: int
    input: Any = None
    end: int = -1
    output: Any = None


@dataclass(eq=False)
class BlockRecord:
    """A candidate block, its MLPs, what the probe saw it do, and what was read off it."""

    block: nn.Module
    mlps: list[MLP]
    calls: list[_Call] = field(default_factory=list)
    runs: int = 0
    input: Any = None
    output: Any = None
    result: BlockAnatomy | str | None = None  # the anatomy, or why the block cannot take an adapter
    order: int = -1  # when it started (blocks are numbered in the order the forward runs them)


class Probe:
    """Hooks that record, while a block runs, every call of a module inside it (input, output, order); each block
    is analysed when it returns (it may be run once more, with a known change at one module, to confirm where
    its MLP branch joins the residual) and its tensors are let go."""

    def __init__(self, records: list[BlockRecord], batch: int):
        self.records = records
        self.batch = batch
        self.clock = itertools.count()
        self.active: list[BlockRecord] = []
        self.handles: list = []
        self.pending: dict[int, list[_Call]] = {}  # calls begun and not yet returned, per module
        self.paused = False  # while a block is run again for a check
        self.owners: dict[int, list[BlockRecord]] = {}
        for record in records:
            for module in record.block.modules():
                if module is not record.block:
                    self.owners.setdefault(id(module), []).append(record)

    def __enter__(self) -> Probe:
        hooked = set()
        for record in self.records:
            block = record.block
            self.handles.append(block.register_forward_pre_hook(self._block_starts(record), with_kwargs=True))
            self.handles.append(block.register_forward_hook(self._block_ends(record), with_kwargs=True))
            for module in block.modules():
                if module is not block and id(module) not in hooked:
                    hooked.add(id(module))
                    self.handles.append(module.register_forward_pre_hook(self._starts, with_kwargs=True))
                    self.handles.append(module.register_forward_hook(self._ends))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _block_starts(self, record: BlockRecord) -> Callable:
        def hook(module, args, kwargs):
            if self.paused:
                return
            record.runs += 1
            record.input = first_tensor(args) if first_tensor(args) is not None else first_tensor(kwargs)
            record.calls = []
            record.order = next(self.clock)
            self.active.append(record)

        return hook

    def _block_ends(self, record: BlockRecord) -> Callable:
        def hook(module, args, kwargs, output):
            if self.paused:
                return
            if record in self.active:
                self.active.remove(record)
            record.output = first_tensor(output)
            if record.runs == 1:
                record.result = read_block(record, self.batch, self._rerun(module, args, kwargs))
            record.calls, record.input, record.output = [], None, None  # let the tensors go

        return hook

    def _rerun(self, block: nn.Module, args: tuple, kwargs: dict) -> Callable:
        """``rerun(module, delta)``: the block's output when ``delta`` is added to ``module``'s output."""

        def rerun(module: nn.Module, delta: torch.Tensor) -> torch.Tensor | None:
            handle = module.register_forward_hook(lambda m, a, out: out + delta.reshape(out.shape))
            self.paused = True
            try:
                return first_tensor(block(*args, **kwargs))
            finally:
                handle.remove()
                self.paused = False

        return rerun

    def _starts(self, module, args, kwargs):
        owners = [r for r in self.owners.get(id(module), ()) if r in self.active]
        if owners and not self.paused:
            call = _Call(module, next(self.clock), first_tensor(args) if args else first_tensor(kwargs))
            for record in owners:
                record.calls.append(call)
            self.pending.setdefault(id(module), []).append(call)

    def _ends(self, module, args, output):
        pending = self.pending.get(id(module))
        if pending and not self.paused:
            call = pending.pop()
            call.end, call.output = next(self.clock), first_tensor(output)


def read_block(record: BlockRecord, batch: int, rerun: Callable) -> BlockAnatomy | str:
    """The anatomy of one block from the calls recorded while it ran, or why it cannot take an adapter."""
    y, calls = record.output, record.calls
    counts: dict[int, int] = {id(record.block): 1}
    for call in calls:
        counts[id(call.module)] = counts.get(id(call.module), 0) + 1
    chosen, reason = None, "no MLP found in it"
    for mlp in record.mlps:  # the last MLP the block runs on its tokens is its channel MLP
        if mlp.entry is record.block:  # the MLP is the block itself (its own residual inside: iFormer's FFN)
            entry = [_Call(record.block, -1, record.input, 1 << 62, y)]
        else:
            entry = [c for c in calls if c.module is mlp.entry]
        problem = _mlp_call_problem(mlp, entry, record, batch)
        if problem is None and (chosen is None or entry[0].start > chosen[1].start):
            chosen = (mlp, entry[0])
        elif chosen is None:
            reason = problem
    if chosen is None or y is None:
        return reason if chosen is None else "its output is not a tensor"
    mlp, entry = chosen
    once = lambda call: counts[id(call.module)] == 1  # noqa: E731
    exit_call = entry if mlp.output is None else _follow(calls, entry, within=mlp.output)
    found = _residual_anatomy(record, entry, calls, once, y, rerun)
    width_in, width_out, channels_last = mlp_widths(mlp)
    if found is None:  # beside the MLP module: its input in, its output out
        anatomy = BlockAnatomy(mlp.entry, exit_call.module, adapter_input="mlp_input")
        residual, branch = entry.input, exit_call.output
    else:
        anatomy, residual, branch = found
    residual_axis = _channel_axis(residual, width_in, channels_last)
    branch_axis = _channel_axis(branch, width_in if anatomy.adapter_input == "residual" else width_out, channels_last)
    if residual_axis is None or branch_axis is None:
        return f"its MLP's width ({width_in}) is on no axis of the tokens around it"
    if residual.shape[0] % batch or branch.shape[0] % batch:
        return "the tokens around its MLP are not laid out sample by sample"
    sites = _sites(record, mlp, calls, once, batch)
    return replace(
        anatomy,
        residual_axis=residual_axis,
        branch_axis=branch_axis,
        in_width=int(residual.shape[residual_axis]),
        out_width=int(branch.shape[branch_axis]),
        sites={name: module for name, (module, _) in sites.items()},
        shapes={name: site for name, (_, site) in sites.items()},
    )


def _mlp_call_problem(mlp: MLP, entry: list[_Call], record: BlockRecord, batch: int) -> str | None:
    if len(entry) != 1:
        return f"its MLP {type(mlp.entry).__name__} runs {len(entry)} times in one pass of the block"
    x = entry[0].input
    if x is None or x.ndim < 2 or x.shape[0] % batch:
        return f"its MLP {type(mlp.entry).__name__} does not run on each sample's tokens"
    width_in, _, channels_last = mlp_widths(mlp)
    axis = _channel_axis(x, width_in, channels_last)
    if axis is None:
        return f"its MLP {type(mlp.entry).__name__} takes no tensor of its width ({width_in})"
    per_sample = x.numel() // (x.shape[axis] * batch)  # positions the MLP sees in each sample
    block_in = record.input
    if per_sample == 1 and block_in is not None and block_in.numel() // batch > width_in:
        return f"its MLP {type(mlp.entry).__name__} runs on one vector per sample (a pooled or class token)"
    return None


def _channel_axis(x: torch.Tensor | None, width: int, channels_last: bool) -> int | None:
    """The axis of ``x`` holding ``width`` channels: -1 (the last) or a positive index (1 for a convolution's
    tensors); where several axes have that size, the one the MLP's layout says. None where no axis has it."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        return None
    axes = [a for a in range(1, x.ndim) if x.shape[a] == width]
    last = x.ndim - 1
    for axis in ([last, 1] if channels_last else [1, last]) + axes:
        if axis in axes:
            return -1 if axis == last else axis
    return None


def _follow(calls: list[_Call], start: _Call, within: nn.Module | None = None) -> _Call:
    """The last call of the chain that starts at ``start``'s output: each next call takes the previous output as
    its input (the same tensor object), innermost first (``within``: only calls inside that module)."""
    inside = {id(m) for m in within.modules()} if within is not None else None
    current = start
    while True:
        following = [
            c
            for c in calls
            if c.start > current.start
            and c.input is current.output
            and c.output is not None
            and (inside is None or id(c.module) in inside)
            and c is not current
        ]
        if not following:
            return current
        current = min(following, key=lambda c: c.end)


def _residual_anatomy(record: BlockRecord, entry: _Call, calls: list[_Call], once, y: torch.Tensor, rerun):
    """(anatomy, x', m) where the block's output is exactly ``y = x' + m``, x' the input of a module that feeds
    the MLP (its norm, the MLP itself, or the block), m the output of a module after it; None where none is.

    The module giving m may also end the attention branch (one DropPath called twice: CaiT, BEiT): then its
    first call after x' was read is the MLP's (``shared_branch``). A branch that is all zeros (a
    zero-initialised post-norm) satisfies any such sum, so it must also pass through: the block is run again with
    a known change at that module, which must reach ``y`` unchanged."""
    residuals: list[tuple[nn.Module, torch.Tensor, int]] = []
    feeding = [c for c in calls if c.output is entry.input and c.end <= entry.start and once(c)]
    if feeding and feeding[-1].input is not None:
        residuals.append((feeding[-1].module, feeding[-1].input, feeding[-1].start))
    residuals.append((entry.module, entry.input, entry.start))
    if record.input is not None:
        residuals.append((record.block, record.input, -1))
    branches = [c for c in calls if c.start >= entry.start and isinstance(c.output, torch.Tensor)]
    branches.sort(key=lambda c: c.end, reverse=True)  # the branch's last module first (DropPath after layer scale)
    for call in branches:
        m = call.output
        if m.numel() != y.numel() or m.dtype != y.dtype:
            continue
        for module, x, read_at in residuals:
            shared = not once(call)
            if shared and (module is record.block or _called_between(calls, call.module, read_at, call.start)):
                continue  # the hook could not tell this call from the module's others
            if not (isinstance(x, torch.Tensor) and x.shape == m.shape and _equal_sum(y, x, m)):
                continue
            if bool((m != 0).any()) or _passes_through(rerun, call.module, m, y, x):
                return BlockAnatomy(module, call.module, shared_branch=shared), x, m
    return None


def _called_between(calls: list[_Call], module: nn.Module, start: int, end: int) -> bool:
    return any(c.module is module and start < c.start < end for c in calls)


def _equal_sum(y: torch.Tensor, x: torch.Tensor, m: torch.Tensor) -> bool:
    """Whether ``y`` is ``x + m`` up to rounding (the block adds them itself, so they agree to a few ulps), in
    ``y``'s layout: the same elements reshaped, or with the channels moved (tokens -> (B, C, H, W) and back)."""
    return _arrangement(y, x, m) is not None


def _arrangement(y: torch.Tensor, x: torch.Tensor, m: torch.Tensor):
    """The rearrangement ``f`` with ``y == f(x) + f(m)`` (see ``_equal_sum``), or None."""
    total = x + m
    tiny = torch.finfo(y.dtype).tiny
    for arrange in _ARRANGEMENTS:
        try:
            candidate = arrange(total, y.shape)
        except RuntimeError:
            continue
        if candidate.shape != y.shape:
            continue
        tolerance = 8 * torch.finfo(y.dtype).eps * (arrange(x.abs(), y.shape) + arrange(m.abs(), y.shape) + tiny)
        if bool(((y - candidate).abs() <= tolerance).all()):
            return arrange
    return None


#: how a block may lay out x' + m before returning it: as it is, or its channels moved to axis 1 / to the end
_ARRANGEMENTS = (
    lambda t, shape: t.reshape(shape),
    lambda t, shape: t.movedim(-1, 1).reshape(shape),
    lambda t, shape: t.movedim(1, -1).reshape(shape),
)


def _passes_through(rerun, module: nn.Module, m: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether a change added to ``module``'s output reaches the block's output unchanged."""
    delta = torch.randn(m.shape, generator=torch.Generator().manual_seed(1)).to(m.device, m.dtype)
    arrange = _arrangement(y, x, m)
    changed = rerun(module, delta)
    if arrange is None or changed is None or changed.shape != y.shape:
        return False
    return _equal_sum(changed, x, m + delta)


def _sites(record: BlockRecord, mlp: MLP, calls: list[_Call], once, batch: int) -> dict[str, tuple[nn.Module, Site]]:
    """The block's operations a task may modulate (see the module docstring), in the order they run."""
    names = {id(m): n for n, m in record.block.named_modules()}
    in_mlp = {id(m) for part in mlp.modules for m in part.modules()}
    sites: dict[str, tuple[nn.Module, Site]] = {}
    projections = []
    for call in calls:
        module = call.module
        if not once(call) or not _channels_last_call(module, call, batch):
            continue
        if id(module) in in_mlp:
            if isinstance(module, nn.Linear):
                projections.append((names[id(module)].rsplit(".", 1)[-1], module))
            continue
        attribute = names.get(id(module), "").rsplit(".", 1)[-1]
        name = SITE_ALIASES.get(attribute)
        if attribute == "dense" and "attention" in names.get(id(module), ""):
            name = "proj"  # Hugging Face: attention.output.dense
        if name is None or not (isinstance(module, nn.Linear) or _is_norm(module)):
            continue
        if name in sites:  # a second attention (TimeSformer's temporal one): its own names, numbered
            name = next(f"{name}_{k}" for k in itertools.count(1) if f"{name}_{k}" not in sites)
        sites[name] = (module, _site(name, module, _role(name)))
    labels = [a for a, _ in projections]
    if len(projections) == 2 or len(set(labels)) != len(labels) or any(not a.isidentifier() for a in labels):
        labels = ["fc1", "fc2"] if len(projections) == 2 else [f"fc{k}" for k in range(1, len(projections) + 1)]
    for label, (_, module) in zip(labels, projections, strict=True):
        label = label if label not in sites else f"mlp_{label}"
        sites[label] = (module, _site(label, module, "mlp"))
    return sites


def _channels_last_call(module: nn.Module, call: _Call, batch: int) -> bool:
    x, out = call.input, call.output
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or x.ndim < 2 or x.shape[0] % batch:
        return False
    if isinstance(module, nn.Linear):
        return out.shape[-1] == module.out_features
    width = _norm_width(module)
    return width is not None and out.shape[-1] == width == x.shape[-1]


def _is_norm(module: nn.Module) -> bool:
    return _norm_width(module) is not None


def _norm_width(module: nn.Module) -> int | None:
    """A LayerNorm / RMSNorm's width (any class named so, with a per-channel weight), else None."""
    if not re.search(r"(layer|rms)_?norm", type(module).__name__, re.IGNORECASE) and not isinstance(
        module, nn.LayerNorm
    ):
        return None
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 1:
        return int(weight.shape[0])
    shape = getattr(module, "normalized_shape", None)
    return int(shape[-1]) if shape else None


def _role(name: str) -> str:
    base = name.split("_")[0]
    if base in ATTENTION_INPUTS:
        return "attention_input"
    return "attention_output" if base == "proj" else "norm"


def _site(name: str, module: nn.Module, role: str) -> Site:
    if isinstance(module, nn.Linear):
        return Site(name, module.in_features, module.out_features, module.bias is not None, role)
    width = _norm_width(module)
    kind = "rms" if "rms" in type(module).__name__.lower() else "layer"
    eps = getattr(module, "eps", None)
    eps = getattr(module, "variance_epsilon", eps)  # Hugging Face's RMSNorms
    eps = float(eps) if isinstance(eps, (int, float)) else 1e-6 if kind == "layer" else torch.finfo(torch.float32).eps
    return Site(name, width, width, isinstance(getattr(module, "bias", None), torch.Tensor), role, kind, eps)
