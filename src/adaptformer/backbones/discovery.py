"""Finding a backbone's anatomy by mechanism (``anatomy.py`` says what it is): the MLP modules (``mlps.py``), the
blocks (the modules holding them, in the order the forward runs them), and each block read off one probe forward
of the model itself (``probe.py``), two samples at its input size with its weights as they are. Blocks whose MLP
cannot take an adapter (an MLP gating a pooled context, a class-attention block's MLP on the class token alone)
are left out, with their reasons, where others can; a model with none is refused in one line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from ..errors import AdaptFormerError, first_line
from .anatomy import Anatomy, BlockAnatomy, first_tensor
from .mlps import MLP, find_mlps
from .probe import BlockRecord, Probe

PROBE_BATCH = 2


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
    records = [BlockRecord(group[0].parent, group) for group in by_parent.values()]
    if not records:
        raise AdaptFormerError(f"{cls}: not supported: it has no MLP block (no module shaped like an MLP)")
    was_training = backbone.training
    switched = call_projection_modules(backbone)
    backbone.eval()
    failure = None
    try:
        for example in examples:
            try:
                with Probe(records, example.shape[0]), torch.no_grad():
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
            message = first_line(error, 160)
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


def _assemble(records: list[BlockRecord], names: dict[int, str], cls: str) -> Anatomy:
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
