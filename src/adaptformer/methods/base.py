"""What every method shares: its typed config, and the :class:`Task` that holds one task's trainable modules.

A task is one recognition problem on a shared, frozen backbone: its method's modules (adapters, prompts),
its head (``fc_norm`` when the backbone has one, BatchNorm, Linear) and its class names. The host model
(``adaptformer.adapted.model.AdaptedModel``) routes every block of the backbone through the active task's hook
points, so a method only says what happens at them:

* ``before_block(i, x)``: the input of block i (VPT prepends prompt tokens here);
* ``after_block(i, y)``: the output of block i (VPT drops them again);
* ``wants_residual(i)``: whether ``mlp_branch`` needs x', the post-attention residual of block i;
* ``mlp_branch(i, m, x')``: the block's MLP branch m = DropPath(MLP(LN2(x'))) (AdaptFormer adds its AdaptMLP);
* ``key_value_prefix(i)``: keys and values that block i's attention should see in its first prefix slots
  (VPT's ``kv`` mode; the host writes them over those slots' keys and values);
* ``site_output(i, site, x, out)``: the output of one of block i's operations (``qkv``, ``proj``, ``fc1``,
  ``fc2``, ``norm1``, ``norm2``) given its input, for the sites where ``modulates(i, site)`` (LoRA adds
  ``s·B A x``, BitFit a bias, SSF a scale and a shift).

Two more describe a task's modules in a layout the router can stack across tasks, so a batch whose samples
belong to many tasks runs as batched matrix products (``routing.py``): ``packed_branch(i)`` (the MLP branch
of block i as a bottleneck, :class:`PackedBranch`) and ``packed_head()`` (:class:`PackedHead`).

Parameter names inside a task are the reference implementation's (``blocks.{i}.adaptmlp.*``,
``embeddings.{i}``, ``fc_norm.*``, ``head.0.*``, ``head.1.*``), so a task's ``state_dict()`` is what a task
file stores and reference checkpoints load key for key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.anatomy import Site
from ..errors import AdaptFormerError
from ..utils.options import check_bool, option
from .heads import TaskHead


@dataclass(frozen=True)
class MethodConfig:
    """Options of every method. Subclasses add theirs; every field is a CLI flag and a YAML key."""

    name: ClassVar[str] = ""
    #: what reports, the demo and the README's methods table call it
    label: ClassVar[str] = ""
    #: the paper (authors, venue, year) and where its official code lives, for reports and the methods table
    reference: ClassVar[str] = ""
    #: False for full fine-tuning: the task trains the backbone itself, so it cannot share one
    shares_backbone: ClassVar[bool] = True
    #: True where the task leaves the backbone's features unchanged (the linear probe), so training may compute
    #: them once and cache them (``--cache-features``)
    caches_features: ClassVar[bool] = False
    #: ``tune``'s learning rates for this method (the first axis searched, and again last)
    learning_rates: ClassVar[tuple[float, ...]] = (0.1, 0.4, 1.0)
    #: ``tune``'s search axes of the method's own options: (option, values) in the order searched
    tune_axes: ClassVar[tuple[tuple[str, tuple[Any, ...]], ...]] = ()
    #: training options ``benchmark`` fixes for this method over its protocol (full fine-tuning: a tenth of the rate)
    benchmark_options: ClassVar[dict[str, Any]] = {}
    #: whether ``benchmark`` runs it when ``--methods`` is not given
    benchmark_default: ClassVar[bool] = False

    head_batchnorm: bool = option(True, "BatchNorm1d(affine=False, eps=1e-6) before the linear head (reference code)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_bool("head_batchnorm", self.head_batchnorm)

    @classmethod
    def own_options(cls) -> tuple[str, ...]:
        """The method's own options (the fields every method shares left out): what reports plot it by."""
        shared = {f.name for f in dataclasses.fields(MethodConfig)}
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in shared)

    def title(self) -> str:
        """The method's name as reports show it (a method may add its variant: ``VPT-deep``)."""
        return self.label or self.name

    def describe(self) -> str:
        """``bottleneck=64, scale=0.1, ...``: the method's own options, as error messages and listings show it."""
        data = self.to_dict()
        return ", ".join(f"{k}={data[k]}" for k in self.own_options()) or "no options"

    def to_dict(self) -> dict[str, Any]:
        """``{"method": name, field: value, ...}`` with tuples as lists (JSON/YAML friendly)."""
        data = {"method": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data


@dataclass(frozen=True)
class BackboneSpec:
    """What a task needs to know of the backbone it will run on (methods know nothing of timm)."""

    #: width of the pooled features the head receives
    dim: int
    depth: int
    #: width of the keys/values of a block's attention where it can take a key/value prefix (timm's fused
    #: ``attn.qkv``), else None
    key_value_dim: int | None
    fc_norm: nn.Module | None  # the backbone's pretrained fc_norm (mean-pooled models); each task trains a copy
    device: torch.device
    dtype: torch.dtype
    #: per block, the operations a task can change the outputs of (``backbones/anatomy.py``: qkv or q/k/v,
    #: proj, fc1, fc2, norm1, norm2, ...) with their shapes and roles; empty where none can be hooked
    sites: tuple[dict[str, Site], ...] = ()
    #: why this backbone cannot take prompt tokens (VPT), or None where it can
    no_prompts: str | None = None
    #: per block, the channels of the adapter's input (x', or the MLP's input) and of the MLP branch m
    widths: tuple[int, ...] = ()
    branch_widths: tuple[int, ...] = ()
    #: per block, what the MLP branch reads: ``residual`` (x', a pre-norm block: y = x' + m) or ``mlp_input``
    adapter_inputs: tuple[str, ...] = ()
    #: ``(block index, site name) -> the frozen module`` for methods that read a frozen layer's weights (DoRA);
    #: a reference to the backbone's own module, never copied into a task
    site_modules: Callable[[int, str], nn.Module] | None = field(default=None, compare=False, repr=False)
    #: tokens before the patch grid (class, distillation, register tokens) and the patch grid at the backbone's
    #: input size ((H, W), or (T, H, W) for video), where the backbone declares them; None where it does not
    prefix_tokens: int | None = None
    grid: tuple[int, ...] | None = None

    def adapter_input(self, index: int) -> str:
        return self.adapter_inputs[index] if self.adapter_inputs else "residual"

    def site_module(self, index: int, name: str) -> nn.Module:
        if self.site_modules is None:
            raise AdaptFormerError(f"block {index}'s {name}: this backbone description holds no modules")
        return self.site_modules(index, name)

    def width(self, index: int) -> int:
        """Channels of block ``index``'s adapter input (what an adapter or a prompt there is sized to)."""
        return self.widths[index]

    def branch_width(self, index: int) -> int:
        """Channels of block ``index``'s MLP branch m (the adapter's output; its input too when sequential)."""
        return self.branch_widths[index] if self.branch_widths else self.widths[index]

    def sites_by_role(self, method: str, roles: dict[str, tuple[str, ...]]) -> list[dict[str, Site]]:
        """Per block, the sites whose role is one of ``roles`` (target -> roles): a block without them gets none
        (a hybrid's convolution stages); one line naming the targets no block has, and what the blocks do have."""
        blocks = self.sites or ({},) * self.depth
        wanted = {role for group in roles.values() for role in group}
        chosen = [{n: s for n, s in block.items() if s.role in wanted} for block in blocks]
        missing = [t for t, r in roles.items() if not any(s.role in r for b in blocks for s in b.values())]
        if missing:
            have = sorted({name for block in blocks for name in block}) or ["none"]
            raise AdaptFormerError(
                f"method {method}: the backbone's blocks have no hookable {', '.join(missing)} (a plain Linear or "
                f"LayerNorm the block calls once on channels-last tokens; its blocks have: {', '.join(have)})"
            )
        return chosen


@dataclass
class PackedBranch:
    """An MLP branch ``m + s·Up(ReLU(Down(x)))`` in the router's stackable layout.

    ``x`` is x' (``source`` "residual", a parallel adapter) or m (``source`` "branch", sequential), optionally
    layer-normalised without affine (``eps`` set; a LayerNorm's affine folds into Down). The tensors are the
    task's own parameters where nothing is folded (views, no copy), so packing costs nothing per forward and a
    resident task holds its weights once; the router stacks them across samples."""

    #: returned by ``Task.packed_branch`` where the task's branch has no packed form (the router runs its own)
    UNPACKED: ClassVar[object] = object()

    source: str
    eps: float | None
    down: torch.Tensor  # (r, d_in)
    down_bias: torch.Tensor  # (r,)
    up: torch.Tensor  # (d_out, r)
    up_bias: torch.Tensor  # (d_out,)
    scale: float | torch.Tensor  # s: a number, or a one-element tensor (a learnable scale)

    @property
    def input_kind(self) -> tuple[str, float | None]:
        return self.source, self.eps

    @property
    def width(self) -> int:
        return self.down.shape[0]

    def padded(self, width: int) -> PackedBranch:
        """The same branch with a bottleneck of ``width`` (zero rows/columns change no output)."""
        extra = width - self.width
        if not extra:
            return self
        down, down_bias = F.pad(self.down, (0, 0, 0, extra)), F.pad(self.down_bias, (0, extra))
        up = F.pad(self.up, (0, extra))
        return PackedBranch(self.source, self.eps, down, down_bias, up, self.up_bias, self.scale)

    @staticmethod
    def zeros(dim_in: int, dim_out: int, width: int, dtype: torch.dtype, device: torch.device) -> PackedBranch:
        """A branch that adds nothing (for samples whose task has no adapter at a block)."""
        zero = partial(torch.zeros, dtype=dtype, device=device)
        return PackedBranch("branch", None, zero(width, dim_in), zero(width), zero(dim_out, width), zero(dim_out), 0.0)


@dataclass
class PackedHead:
    """A head ``Linear(BatchNorm(fc_norm(x)))`` in eval mode as tensors the router can stack across tasks."""

    norm_weight: torch.Tensor | None  # fc_norm's affine (d,), None without fc_norm
    norm_bias: torch.Tensor | None
    norm_eps: float
    mean: torch.Tensor  # (d,) BatchNorm running mean (zeros without BatchNorm)
    inv_std: torch.Tensor  # (d,) 1 / sqrt(running_var + eps) (ones without BatchNorm)
    weight: torch.Tensor  # (C, d)
    bias: torch.Tensor  # (C,)


class Task(TaskHead):
    """One task: the head (inherited), the method's modules (subclasses), the config and the class names."""

    #: why the task cannot be folded into the backbone's weights (``adaptformer merge``), or None where it can
    #: (``merge_into``); every method that adds a nonlinear module or tokens says why in its own words
    merge_refusal: ClassVar[str | None] = "it adds modules to the blocks that the backbone has no weights for"

    def __init__(self, config: MethodConfig, classes: list[str], backbone: BackboneSpec):
        super().__init__(backbone.dim, len(classes), backbone.fc_norm, batchnorm=config.head_batchnorm)
        self.config = config
        self.classes = list(classes)
        self.objective = "classification"  # or "multilabel"; set by AdaptedModel.add_task

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # hook points (see the module docstring); the defaults leave the backbone untouched
    def before_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def wants_residual(self, index: int) -> bool:
        return False

    def prompt_span(self, index: int, depth: int) -> tuple[torch.Tensor, int] | None:
        """Tokens this task prepends before block ``index`` and the block after which they are dropped (used by
        mixed-task batches, which lay prompts out themselves); None when it prepends nothing there."""
        return None

    def mlp_branch(self, index: int, m: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        return m

    def keeps_prompts_between_blocks(self) -> bool:
        """Whether prompt tokens this task adds stay in the sequence from one block to the next (VPT shallow)."""
        return False

    def reset_head(self, num_classes: int) -> None:
        super().reset_head(num_classes)
        self.classes = [str(i) for i in range(num_classes)]

    def modulates(self, index: int, site: str) -> bool:
        """Whether ``site_output`` changes the output of block ``index``'s operation ``site``."""
        return False

    def site_output(self, index: int, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out

    def key_value_prefix(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values), each (1, N, key_value_dim), for the N prefix slots this task put before block
        ``index``; None where it adds none."""
        return None

    def packed_branch(self, index: int) -> PackedBranch | None | object:
        """Block ``index``'s MLP branch in the stackable layout; None where the task leaves m unchanged;
        ``PackedBranch.UNPACKED`` where it changes m some other way (the router then runs ``mlp_branch``)."""
        return None if type(self).mlp_branch is Task.mlp_branch else PackedBranch.UNPACKED

    def packed_head(self) -> PackedHead | None:
        """The head as stackable tensors (eval mode), or None when it has no such form."""
        linear = self.head[-1] if isinstance(self.head, nn.Sequential) else self.head
        norm = self.head[0] if isinstance(self.head, nn.Sequential) else None
        fc = self.fc_norm
        if self.training or (norm is not None and norm.affine):
            return None
        if fc is not None and not (isinstance(fc, nn.LayerNorm) and fc.elementwise_affine and fc.bias is not None):
            return None
        dim = linear.in_features
        ones = torch.ones(dim, device=linear.weight.device, dtype=linear.weight.dtype)
        return PackedHead(
            fc.weight if fc is not None else None,
            fc.bias if fc is not None else None,
            fc.eps if fc is not None else 0.0,
            norm.running_mean if norm is not None else torch.zeros_like(ones),
            torch.rsqrt(norm.running_var + norm.eps) if norm is not None else ones,
            linear.weight,
            linear.bias,
        )

    def merge_into(self, index: int, modules: dict[str, nn.Module]) -> None:
        """Fold this task's change of block ``index`` into the backbone's own modules there (``modules``: site
        name -> module, changed in place; the caller works on a copy of the backbone)."""
        if self.merge_refusal is not None:
            raise AdaptFormerError(f"method {self.config.name} cannot be merged: {self.merge_refusal}")

    def parameter_groups(self) -> dict[str, int]:
        """Trainable parameter counts by kind (what ``parameter_report`` shows): the head, its fc_norm, and the
        method's own tensors (``adapters``; a method may name its kind otherwise, as VPT's ``prompts``)."""
        count = lambda module: sum(p.numel() for p in module.parameters()) if module is not None else 0  # noqa: E731
        head, norms = count(self.head), count(self.fc_norm)
        return {"head": head, "norms": norms, "adapters": count(self) - head - norms}
