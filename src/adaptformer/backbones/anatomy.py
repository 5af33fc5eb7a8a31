"""A backbone's anatomy found by mechanism: its blocks, the MLP branch of each, and the operations around it.

AdaptFormer's claim is that every vision transformer shares the MLP block, so an AdaptMLP fits beside it whatever
the attention looks like. This module takes that claim literally: given any ``nn.Module`` it finds

* the **MLP modules**: timm's MLP classes and the families' own (any class or attribute named like an MLP, FFN,
  feed-forward or GLU) and Hugging Face's ``*MLP`` modules and ``intermediate`` + ``output`` pairs, that are
  shaped like one (two or more projections, every convolution 1x1 or depthwise, no attention inside);
* the **blocks**: the module holding each MLP (one MLP per block: the last one it runs, the channel MLP of a
  token-mixing block), in the order the forward runs them;
* in each block, **where the MLP branch starts and ends**, by watching one probe forward of the model itself
  (two samples at its input size, weights as they are): the output of some module in the block is m, the MLP
  branch, and the block's output is exactly ``y = x' + m`` for the input x' of some module (the norm that feeds
  the MLP, the MLP itself in a post-norm block, or the block, ConvNeXt-like). Then the adapter takes x' — the
  paper's *residual* input. Where no such pair holds (a post-norm ``LN(x' + m)``, a layer scale written as a
  multiplication), the adapter is placed beside the MLP module itself: it reads the MLP's input and its output
  is added to the MLP's output (``mlp_input``). Which one each block got is recorded (``adapter_input``);
* the token layout at those points: the channel axis ((B, N, C), (B, H, W, C), or (B, C, H, W) around 1x1-conv
  MLPs) and the widths;
* the **operations** a task may modulate (LoRA, BitFit, SSF), each a plain ``nn.Linear`` or norm that the block
  calls once on channels-last tokens: the attention's input projections (``qkv``, or ``q``/``k``/``v``/``kv``),
  its output projection (``proj``), the MLP's projections (``fc1``, ``fc2``, or by their names in a gated MLP)
  and the two norms (``norm1``, ``norm2``).

Families declared in ``families.py`` add only what discovery cannot know (prompt support, pooling, a block anatomy
they know better); everything else is found here, the same way for every model.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..errors import AdaptFormerError

#: classes and attributes that name an MLP (timm's ``Mlp``/``GluMlp``/``SwiGLU``/``GatedMlp``/``ConvMlp``,
#: ``LevitMlp``, ``RepVitMlp``, ``FFN``, Hugging Face's ``CLIPMLP``/``Dinov2SwiGLUFFN``/... )
MLP_NAME = re.compile(r"mlp|ffn|feed_?forward|glu", re.IGNORECASE)
MLP_ATTRIBUTES = {"mlp", "ffn", "feed_forward", "feedforward", "channel_mixer", "mlp_channels"}
#: subtrees that pool or classify, never a block's MLP
HEAD_ATTRIBUTES = {"head", "head_dist", "heads", "pooler", "classifier", "attn_pool", "pre_logits", "fc_norm"}
PROJECTIONS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
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
PROBE_BATCH = 2


@dataclass(frozen=True)
class Site:
    """One operation of a block a task can modulate: (input width, output width, has a bias)."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    #: ``attention_input`` (qkv, q, k, v, kv), ``attention_output`` (proj), ``mlp`` (its projections), ``norm``
    role: str = "mlp"


@dataclass(frozen=True)
class BlockAnatomy:
    """Where a block's MLP branch starts and ends: the input of ``residual_at`` is the adapter's input, the output
    of ``branch_at`` is m. ``adapter_input``: ``residual`` (the input is x', and ``y = x' + m``) or ``mlp_input``
    (the MLP's own input, the adapter beside the MLP module). ``shared_branch``: ``branch_at`` also ends the
    attention branch (one DropPath module called twice, CaiT), so only its call after ``residual_at`` ran is the
    MLP branch. The axes say where the channels are in those two tensors; ``sites`` are the block's operations
    (``Site`` name -> module) and ``shapes`` their widths."""

    residual_at: nn.Module
    branch_at: nn.Module
    shared_branch: bool = False
    adapter_input: str = "residual"
    residual_axis: int = -1
    branch_axis: int = -1
    in_width: int = 0
    out_width: int = 0
    sites: dict[str, nn.Module] = field(default_factory=dict)
    shapes: dict[str, Site] = field(default_factory=dict)

    def describe(self, names: dict[int, str]) -> str:
        """The block's anatomy as one line of text (what task files compare)."""
        sites = ",".join(f"{n}:{s.in_features}>{s.out_features}{'b' if s.bias else ''}" for n, s in self.shapes.items())
        return (
            f"{self.adapter_input} {names.get(id(self.residual_at), '?')}@{self.residual_axis}->"
            f"{names.get(id(self.branch_at), '?')}@{self.branch_axis} {self.in_width}>{self.out_width} [{sites}]"
        )


@dataclass(frozen=True)
class Anatomy:
    """The anatomy of a whole backbone: its blocks in order and each block's :class:`BlockAnatomy`."""

    blocks: tuple[nn.Module, ...]
    parts: tuple[BlockAnatomy, ...]
    names: tuple[str, ...]  # each block's qualified name in the backbone
    signature: str  # a hash of every block's description: the same model gives the same one
    left_out: tuple[str, ...] = ()  # modules holding an MLP that take no adapter, each with its reason
    feature_dim: int = 0  # the width of the pooled features a task's head receives
    probe_size: int = 0  # the input side the probe ran at (the backbone's own, or the first size it runs at)

    @property
    def adapter_input(self) -> str:
        """``residual``, ``mlp_input``, or ``mixed`` (some blocks each)."""
        kinds = {part.adapter_input for part in self.parts}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def widths(self) -> tuple[int, ...]:
        return tuple(part.in_width for part in self.parts)

    def branch_widths(self) -> tuple[int, ...]:
        return tuple(part.out_width for part in self.parts)


# ---- finding the MLPs without running the model ------------------------------------------------------------------
@dataclass(frozen=True)
class MLP:
    """An MLP of the model: one module, or a Hugging Face ``intermediate`` + ``output`` pair."""

    name: str  # qualified name of ``entry``
    entry: nn.Module  # its input is the MLP's input
    output: nn.Module | None  # a pair's second half (its projection's output is the MLP's), else None
    parent: nn.Module  # the module holding it (the block, unless that is a plain container)

    @property
    def modules(self) -> tuple[nn.Module, ...]:
        return (self.entry,) if self.output is None else (self.entry, self.output)

    def projections(self) -> list[nn.Module]:
        return [m for part in self.modules for m in part.modules() if isinstance(m, PROJECTIONS)]


def find_mlps(root: nn.Module) -> list[MLP]:
    """Every MLP-shaped module of ``root`` outside its head, outermost first (an MLP inside an MLP is not another)."""
    modules = dict(root.named_modules())
    found: list[MLP] = []
    taken: list[str] = []
    for name, module in modules.items():
        if not name or _in_head(name) or any(name.startswith(t + ".") for t in taken):
            continue
        attribute = name.rsplit(".", 1)[-1]
        parent = modules[name.rsplit(".", 1)[0]] if "." in name else root
        if attribute == "intermediate" and type(module).__name__.endswith("Intermediate"):
            output = getattr(parent, "output", None)
            if isinstance(output, nn.Module) and type(output).__name__.endswith("Output"):
                mlp = MLP(name, module, output, parent)
                if _mlp_shape_problem(mlp) is None:
                    found.append(mlp)
                    taken += [name, name.rsplit(".", 1)[0] + ".output" if "." in name else "output"]
            continue
        named_like_mlp = MLP_NAME.search(type(module).__name__) or attribute in MLP_ATTRIBUTES
        if not named_like_mlp or isinstance(module, PROJECTIONS) or type(module).__name__.endswith("Intermediate"):
            continue
        mlp = MLP(name, module, None, module if isinstance(parent, CONTAINERS) else parent)
        if _mlp_shape_problem(mlp) is None:
            found.append(mlp)
            taken.append(name)
    return found


def _in_head(name: str) -> bool:
    return any(part in HEAD_ATTRIBUTES for part in name.split("."))


def _mlp_shape_problem(mlp: MLP) -> str | None:
    """Why a module named like an MLP is not one (None when it is)."""
    projections = mlp.projections()
    if len(projections) < 2:
        return "fewer than two projections"
    for conv in projections:
        if isinstance(conv, nn.Linear):
            continue
        pointwise = all(k == 1 for k in conv.kernel_size)
        if not pointwise and conv.groups != conv.in_channels:
            return f"a {'x'.join(map(str, conv.kernel_size))} convolution mixes positions"
    inside = [type(m).__name__ for part in mlp.modules for m in part.modules()]
    if any("attention" in n.lower() or n.lower().endswith("attn") for n in inside):
        return "it holds an attention"
    return None


def _mlp_widths(mlp: MLP) -> tuple[int, int, bool]:
    """(input width, output width, channels last) of an MLP, from its first and last projection."""
    projections = mlp.projections()
    first, last = projections[0], projections[-1]
    width_in = first.in_features if isinstance(first, nn.Linear) else first.in_channels
    width_out = last.out_features if isinstance(last, nn.Linear) else last.out_channels
    return int(width_in), int(width_out), isinstance(first, nn.Linear)


# ---- the probe ---------------------------------------------------------------------------------------------------
@dataclass
class _Call:
    module: nn.Module
    start: int
    input: Any = None
    end: int = -1
    output: Any = None


@dataclass
class _BlockRecord:
    block: nn.Module
    mlps: list[MLP]
    calls: list[_Call] = field(default_factory=list)
    runs: int = 0
    input: Any = None
    output: Any = None
    result: BlockAnatomy | str | None = None  # the anatomy, or why the block cannot take an adapter
    order: int = -1  # when it started (blocks are numbered in the order the forward runs them)


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a module's input or output (a tensor, a tuple or list, a dict or ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


class _Probe:
    """Hooks that record, while a block runs, every call of a module inside it (input, output, order); each block
    is analysed when it returns (it may be run once more, with a known change at one module, to confirm where
    its MLP branch joins the residual) and its tensors are let go."""

    def __init__(self, records: list[_BlockRecord], batch: int):
        self.records = records
        self.batch = batch
        self.clock = itertools.count()
        self.active: list[_BlockRecord] = []
        self.handles: list = []
        self.pending: dict[int, list[_Call]] = {}  # calls begun and not yet returned, per module
        self.paused = False  # while a block is run again for a check
        self.owners: dict[int, list[_BlockRecord]] = {}
        for record in records:
            for module in record.block.modules():
                if module is not record.block:
                    self.owners.setdefault(id(module), []).append(record)

    def __enter__(self) -> _Probe:
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

    def _block_starts(self, record: _BlockRecord) -> Callable:
        def hook(module, args, kwargs):
            if self.paused:
                return
            record.runs += 1
            record.input = first_tensor(args) if first_tensor(args) is not None else first_tensor(kwargs)
            record.calls = []
            record.order = next(self.clock)
            self.active.append(record)

        return hook

    def _block_ends(self, record: _BlockRecord) -> Callable:
        def hook(module, args, kwargs, output):
            if self.paused:
                return
            if record in self.active:
                self.active.remove(record)
            record.output = first_tensor(output)
            if record.runs == 1:
                record.result = _analyse(record, self.batch, self._rerun(module, args, kwargs))
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


def probe_input(spec_size: int, frames: int, reference: torch.Tensor, batch: int = PROBE_BATCH) -> torch.Tensor:
    """A small batch the probe runs: random pixels at the backbone's size (clips when it takes frames)."""
    shape = (batch, 3, frames, spec_size, spec_size) if frames > 1 else (batch, 3, spec_size, spec_size)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(device=reference.device, dtype=reference.dtype)


def discover(
    backbone: nn.Module,
    run: Callable[[torch.Tensor], torch.Tensor],
    examples: list[torch.Tensor],
    keep_switches: bool = False,
    label: str | None = None,
) -> Anatomy:
    """The anatomy of ``backbone``: ``run(example)`` is one forward to its pooled features (run in eval mode,
    without gradients), tried on each of ``examples`` until one runs (the first is the backbone's own size). The
    blocks are the modules holding the MLPs found; ``label`` names the model in messages. Attention layers that can
    be told to call their projection modules are, for the probe (and for good when ``keep_switches``: the adapted
    model's hooks need those calls)."""
    mlps = find_mlps(backbone)
    names = {id(m): n for n, m in backbone.named_modules()}
    cls = label or type(backbone).__name__
    by_parent: dict[int, list[MLP]] = {}
    for mlp in mlps:
        by_parent.setdefault(id(mlp.parent), []).append(mlp)
    records = [_BlockRecord(group[0].parent, group) for group in by_parent.values()]
    if not records:
        raise AdaptFormerError(f"{cls}: not supported: it has no MLP block (no module shaped like an MLP)")
    was_training = backbone.training
    switched = call_projection_modules(backbone)
    backbone.eval()
    failure = None
    try:
        for example in examples:
            try:
                with _Probe(records, example.shape[0]), torch.no_grad():
                    pooled = first_tensor(run(example))
                break
            except AdaptFormerError:
                raise
            except Exception as error:  # a model that does not run at this size: the next one
                failure = failure or (example, error)
                for record in records:
                    record.runs, record.result = 0, None
        else:
            example, error = failure
            message = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
            raise AdaptFormerError(
                f"{cls}: the probe forward (a batch of {tuple(example.shape)}) failed, so its blocks cannot be "
                f"found: {message}"
            )
    finally:
        backbone.train(was_training)
        if not keep_switches:
            for attention in switched:
                attention.qkv_bias_separate = False
    anatomy = _assemble(records, names, cls)
    if pooled is None or pooled.ndim != 2:
        raise AdaptFormerError(f"{cls}: not supported: its pooled features are not one vector per sample")
    return replace(anatomy, feature_dim=int(pooled.shape[-1]), probe_size=int(example.shape[-1]))


def call_projection_modules(backbone: nn.Module) -> list[nn.Module]:
    """timm's Eva attention with separate q/v biases (EVA-02, BEiT in timm's Eva) computes
    ``F.linear(x, qkv.weight, bias)``, which bypasses ``attn.qkv``'s hooks (kv prompts, LoRA/SSF on qkv would
    silently do nothing); its ``qkv_bias_separate`` mode calls ``attn.qkv`` and adds the biases after: the same
    sum. Returns the attention layers switched."""
    switched = []
    for module in backbone.modules():
        if getattr(module, "q_bias", None) is not None and getattr(module, "qkv_bias_separate", True) is False:
            module.qkv_bias_separate = True
            switched.append(module)
    return switched


def _assemble(records: list[_BlockRecord], names: dict[int, str], cls: str) -> Anatomy:
    records = [r for r in records if r.runs > 0]  # a block the forward never runs is not in the features' path
    problems = []
    for record in records:
        where = f"{names.get(id(record.block), '?')} ({type(record.block).__name__})"
        if record.runs > 1:
            problems.append(f"{where} runs {record.runs} times per forward (shared weights)")
        elif not isinstance(record.result, BlockAnatomy):
            problems.append(f"{where}: {record.result}")
    usable = [r for r in records if isinstance(r.result, BlockAnatomy)]
    if not usable:
        reason = problems[0] if problems else "no block runs an MLP on its tokens"
        raise AdaptFormerError(f"{cls}: not supported: {reason}")
    # blocks whose MLP cannot take an adapter are left out where others can (an MLP gating a pooled context,
    # class-attention blocks that run their MLP on the class token alone); their reasons are kept
    ordered = sorted(usable, key=lambda r: r.order)
    parts = tuple(r.result for r in ordered)
    block_names = tuple(names.get(id(r.block), "") for r in ordered)
    text = "\n".join(f"{n}: {p.describe(names)}" for n, p in zip(block_names, parts, strict=True))
    signature = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Anatomy(tuple(r.block for r in ordered), parts, block_names, signature, tuple(problems))


# ---- reading one block off its recorded calls --------------------------------------------------------------------
def _analyse(record: _BlockRecord, batch: int, rerun: Callable) -> BlockAnatomy | str:
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
    anatomy = _residual_anatomy(record, entry, calls, once, y, rerun)
    width_in, width_out, channels_last = _mlp_widths(mlp)
    if anatomy is None:  # beside the MLP module: its input in, its output out
        anatomy = BlockAnatomy(mlp.entry, exit_call.module, adapter_input="mlp_input")
        residual, branch = entry.input, exit_call.output
    else:
        residual, branch = anatomy[1], anatomy[2]
        anatomy = anatomy[0]
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


def _mlp_call_problem(mlp: MLP, entry: list[_Call], record: _BlockRecord, batch: int) -> str | None:
    if len(entry) != 1:
        return f"its MLP {type(mlp.entry).__name__} runs {len(entry)} times in one pass of the block"
    x = entry[0].input
    if x is None or x.ndim < 2 or x.shape[0] % batch:
        return f"its MLP {type(mlp.entry).__name__} does not run on each sample's tokens"
    width_in, _, channels_last = _mlp_widths(mlp)
    axis = _channel_axis(x, width_in, channels_last)
    block_in = record.input
    if axis is None:
        return f"its MLP {type(mlp.entry).__name__} takes no tensor of its width ({width_in})"
    per_sample = x.numel() // (x.shape[axis] * batch)  # positions the MLP sees in each sample
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


def _residual_anatomy(record: _BlockRecord, entry: _Call, calls: list[_Call], once, y: torch.Tensor, rerun):
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


def _sites(record: _BlockRecord, mlp: MLP, calls: list[_Call], once, batch: int) -> dict[str, tuple[nn.Module, Site]]:
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
    return Site(name, width, width, isinstance(getattr(module, "bias", None), torch.Tensor), role)
