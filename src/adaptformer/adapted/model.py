"""The adapted model: one frozen backbone shared by named tasks, and the one-call entry points.

    model = adaptformer.adapt(timm_vit, "adaptformer", num_classes=100, bottleneck=64)   # task "default"
    model.add_task("svhn", AdaptFormerConfig(bottleneck=16), classes=digits)            # a second task
    model.set_task("svhn"); logits = model(images)

:class:`AdaptedModel` owns the backbone (a real timm ViT, hooked once by ``adapted/taps.py``) and a
``ModuleDict`` of :class:`~adaptformer.methods.base.Task` objects. Every block routes through the *active*
task; a task owns everything it trains (its adapters/prompts and head), so saving a task is its
``state_dict()`` and removing one is deleting it. The backbone stays frozen and locked in eval mode (its
dropout/DropPath never fire, whatever ``train()`` says) unless the active task is full fine-tuning, which
cannot share a backbone with other tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones.anatomy import Anatomy, first_tensor
from ..backbones.discovery import call_projection_modules
from ..backbones.families import Family, class_name, family_of, stages_of
from ..backbones.hf import HFBackbone
from ..backbones.plain import as_backbone
from ..backbones.timm import create_backbone, source_name
from ..data.transforms import InputSpec
from ..errors import AdaptFormerError
from ..methods.base import BackboneSpec, MethodConfig, Task
from ..methods.registry import get_method, make_method_config
from ..objectives import get_objective
from ..report import ParameterReport
from ..utils.hashing import hash_tensors
from ..utils.options import is_int
from .checkpointing import checkpoint_blocks
from .int8 import float_state_dict, quantize_linear_layers
from .routing import GATHER_FROM_GROUPS, Router
from .taps import install_taps, key_value_dim, sites_per_block

DEFAULT_TASK = "default"


@dataclass(frozen=True)
class BackboneSource:
    """How to re-create the backbone: recorded in task files."""

    name: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm.create_model keywords (img_size, depth, ...)
    checkpoint: str | None = None  # basename of the local weights file, for messages
    family: str = "timm"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AdaptedModel(nn.Module):
    """A frozen backbone and the named tasks that share it (see the module docstring)."""

    def __init__(self, backbone: nn.Module, source: BackboneSource | None = None, anatomy: Anatomy | None = None):
        super().__init__()
        backbone = as_backbone(backbone)
        self.family = family_of(backbone)
        #: the blocks, where each one's MLP branch starts and ends, its operations (``backbones/anatomy.py``):
        #: found once by a probe forward (``anatomy``: already found for this backbone, as ``adapt`` does)
        self.anatomy = anatomy or self.family.anatomy(backbone, keep_switches=True)
        call_projection_modules(backbone)  # the operations' hooks need their modules called
        fc_norm = pretrained_fc_norm(backbone)
        backbone.reset_classifier(0)  # every task brings its own head
        if fc_norm is not None:
            backbone.fc_norm = nn.Identity()  # ... and its own trainable copy of fc_norm
        # rotary position embeddings (timm's Eva: EVA-02, RoPE ViTs) rotate every token after the attention's
        # prefix; prompts are prepended, so each block's attention counts them as prefix tokens (taps.py)
        rotary = getattr(backbone, "rope", None) is not None
        self.plain_tokens = 0  # the sequence length entering block 0 (no prompts yet); set on every forward
        install_taps(self.anatomy, self, int(getattr(backbone, "num_prefix_tokens", 0)) if rotary else None)
        self._blocks = self.anatomy.blocks  # a tuple, so the blocks are not registered twice
        #: what every task is told of the backbone (widths, sites, ...), derived once; device and dtype are read
        #: again for each task (the model may have moved)
        self._spec = describe_backbone(backbone, self.family, self.anatomy, fc_norm)
        backbone.requires_grad_(False)
        self.backbone = backbone
        self.tasks = nn.ModuleDict()
        self.active_task: str | None = None
        self._batch_router: Router | None = None  # set during a mixed-task forward
        self._task_routers: dict[str | None, Router] = {}
        #: from how many task groups with an adapter at a block a mixed batch gathers them (``routing.py``)
        self.gather_from = GATHER_FROM_GROUPS
        self._fingerprint: tuple[tuple, str] | None = None  # (state key, hash) of the frozen weights
        self.quantized: str | None = None  # "int8" once quantize_backbone ran
        self._quantized_from: str | None = None  # the fingerprint of the weights it was quantized from
        #: frames of the clips a video backbone takes (1 for image backbones): images are seen as static clips
        self.clip_frames = self.family.input_spec(backbone).frames
        family = "hf" if isinstance(backbone, HFBackbone) else "timm"
        source = source or BackboneSource(source_name(backbone))
        self.source = dataclasses.replace(source, family=family)
        self._task_routers[None] = Router.for_task(None, self.depth)  # no task: the plain backbone
        self.grad_checkpointing = False
        self.train(False)

    # ---- tasks -------------------------------------------------------------------------------------------
    def add_task(
        self,
        name: str,
        config: MethodConfig | str = "adaptformer",
        classes: list[str] | int | None = None,
        *,
        activate: bool = True,
        objective: str = "classification",
        empty: bool = False,
        **options: Any,
    ) -> Task:
        """Add a task with its own modules and head; ``config`` is a method config or a method name + options.
        ``objective`` is ``classification`` (one label per input) or ``multilabel`` (any number: a sigmoid per
        class; see ``objectives.py``). ``empty``: built on the meta device, no initialisation drawn, for
        ``load_task_state(..., assign=True)`` to fill from a file."""
        _check_task_name(name, self.tasks)
        task = self.build_task(config, classes, objective=objective, empty=empty, **options)
        return self.insert_task(name, task, activate=activate)

    def build_task(
        self,
        config: MethodConfig | str = "adaptformer",
        classes: list[str] | int | None = None,
        *,
        objective: str = "classification",
        empty: bool = False,
        **options: Any,
    ) -> Task:
        """A task for this model's backbone, not yet added (``insert_task``). Nothing of the model changes, so
        any thread may build one: a task store prepares the tasks it is about to load beside the model's work."""
        objective = get_objective(objective).name
        if isinstance(config, str):
            config = make_method_config(config, **options)
        elif options:
            raise AdaptFormerError("pass either a method config or a method name with options, not both")
        if isinstance(classes, int):
            classes = [str(i) for i in range(classes)]
        if not classes:
            raise AdaptFormerError(f"classes: expected class names or a positive number of classes, got {classes!r}")
        if empty:
            with torch.device("meta"):
                task = get_method(config.name).task(config, list(classes), self.backbone_spec())
        else:
            reference = next(self.backbone.parameters())
            task = get_method(config.name).task(config, list(classes), self.backbone_spec())
            task = task.to(device=reference.device, dtype=reference.dtype)
        task = task.requires_grad_(False).train(False)
        task.objective = objective
        return task

    def insert_task(self, name: str, task: Task, activate: bool = True) -> Task:
        """Add a task built by ``build_task`` (and filled, or not) under ``name``."""
        _check_task_name(name, self.tasks)
        config = task.config
        if self.tasks and (not config.shares_backbone or self.backbone_trains):
            full = name if not config.shares_backbone else self.active_task
            raise AdaptFormerError(
                f"task {full}: full fine-tuning trains the backbone, so it cannot share it with other tasks "
                f"({', '.join(t for t in [*self.tasks, name] if t != full)}); give it a backbone of its own"
            )
        if task.training != self.training:
            task.train(self.training)
        self.tasks[name] = task
        self._task_routers[name] = Router.for_task(task, self.depth)
        if activate or self.active_task is None:
            self.set_task(name)
        return task

    def set_task(self, name: str) -> None:
        """Route the backbone through ``name``; only its parameters (and the backbone, for full) require grad.

        Only the task that was active and the new one are touched (every other task stays frozen), so switching
        costs the same with a thousand tasks resident as with two."""
        previous = self.tasks[self.active_task] if self.active_task in self.tasks else None  # noqa: SIM401
        self._activate(name, previous)

    def _activate(self, name: str, previous: Task | None) -> None:
        task = self._get(name)
        if previous is not None and previous is not task:
            previous.requires_grad_(False)
        self.active_task = name
        task.requires_grad_(True).train(self.training)
        if previous is None or not (previous.config.shares_backbone and task.config.shares_backbone):
            self._lock_backbone()  # else the backbone stays as it was: frozen (walking it costs milliseconds)

    def remove_task(self, name: str) -> None:
        task = self._get(name)
        del self.tasks[name]
        del self._task_routers[name]
        if self.active_task == name:
            self.active_task = None
            if self.tasks:
                self._activate(next(iter(self.tasks)), previous=task)
        if self.active_task is None and not task.config.shares_backbone:
            self._lock_backbone()  # the backbone's training state changes only with a full fine-tuning task

    def _lock_backbone(self) -> None:
        """The backbone trains (grad and mode) only under a full fine-tuning task."""
        trains = self.backbone_trains
        self.backbone.requires_grad_(trains)
        self.backbone.train(self.training and trains)

    @contextlib.contextmanager
    def using_task(self, name: str) -> Iterator[Task]:
        """Route through ``name`` for a while (for inference; ``set_task`` is for training)."""
        self._get(name)
        previous, self.active_task = self.active_task, name
        try:
            yield self.tasks[name]
        finally:
            self.active_task = previous

    @property
    def task(self) -> Task:
        """The active task."""
        if self.active_task is None:
            raise AdaptFormerError("the model has no task; add one with add_task(name, method, classes)")
        return self.tasks[self.active_task]

    # ---- the router: what the hooks of every block ask -----------------------------------------------------
    def router(self) -> Router:
        """The routing of the forward in progress: a mixed batch's, else the active task's (``routing.py``)."""
        if self._batch_router is not None:
            return self._batch_router
        return self._task_routers[self.active_task]

    def before_block(self, index: int, block: nn.Module, args: tuple, kwargs: dict):
        if not args or not isinstance(args[0], torch.Tensor) or args[0].ndim < 2:
            return None  # a block that takes a list or a map (found models): prompts never enter it
        if index == 0:
            self.plain_tokens = args[0].shape[1]
        x, mask = self.router().before_block(index, args[0], self.family.attention_mask)
        return (x, *args[1:]), ({**kwargs, "attn_mask": mask} if mask is not None else kwargs)

    def wants_residual(self, index: int) -> bool:
        return self.router().wants_residual(index)

    def mlp_branch(self, index: int, m: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        return self.router().mlp_branch(index, m, residual)

    def attention_qkv(self, index: int, qkv: torch.Tensor) -> torch.Tensor:
        return self.router().attention_qkv(index, qkv)

    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.router().after_block(index, x)

    def site_output(self, index: int, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self.router().site_output(index, site, x, out)

    def forward_mixed(self, x: torch.Tensor, tasks: list[str]) -> list[torch.Tensor]:
        """Logits of sample i by task ``tasks[i]``, all samples in one pass of the backbone (``routing.py``)."""
        if len(tasks) != len(x):
            raise AdaptFormerError(f"tasks: {len(tasks)} names for a batch of {len(x)}")
        names = list(dict.fromkeys(tasks))
        for name in names:
            self._get(name)
        if self.backbone_trains:
            raise AdaptFormerError("a full fine-tuning task cannot share its backbone in a mixed batch")
        if len(names) == 1:  # one task: its own path, exactly
            return list(self.forward(x, task=names[0]))
        position = {name: k for k, name in enumerate(names)}
        router = Router.for_batch([self.tasks[n] for n in names], [position[t] for t in tasks], self.depth, x.device)
        router.gather_from = self.gather_from
        self._batch_router = router
        try:
            pooled = self.family.pool(self.backbone, self.backbone.forward_features(self.backbone_input(x)))
            return router.heads(pooled)
        finally:
            self._batch_router = None

    def _get(self, name: str) -> Task:
        if name not in self.tasks:
            raise AdaptFormerError(f"task {name!r}: no such task (the model has {', '.join(self.tasks) or 'none'})")
        return self.tasks[name]

    @property
    def depth(self) -> int:
        return len(self._blocks)

    def input_spec(self) -> InputSpec:
        """The preprocessing the backbone takes (size, frames, mean/std, crop: ``families.Family.input_spec``), at
        the size its probe ran (where the model does not run at the size it declares, the first that runs)."""
        spec = self.family.input_spec(self.backbone)
        probed = self.anatomy.probe_size
        return spec if not probed or probed == spec.size else spec.replace(size=probed)

    def stages(self) -> list:
        """The backbone's stages (``families.Stage``: name, width, block indices); one for a plain ViT."""
        return stages_of(self.anatomy.widths())

    @property
    def backbone_trains(self) -> bool:
        return any(not task.config.shares_backbone for task in self.tasks.values())

    def accepts_input_size(self, size: int) -> bool:
        """Whether the backbone runs on ``size``-px inputs other than its own (timm's dynamic image size
        resamples the position embeddings per forward)."""
        patch = getattr(getattr(self.backbone, "patch_embed", None), "patch_size", None)
        step = int(patch[-1]) if isinstance(patch, (tuple, list)) else int(patch or 0)
        return bool(getattr(self.backbone, "dynamic_img_size", False)) and step > 0 and size % step == 0

    def enable_any_input_size(self) -> bool:
        """Let a timm ViT take any multiple of its patch size, as timm's ``dynamic_img_size=True`` does: the
        position embeddings are resampled per forward (bicubic, antialiased: exactly what timm does when it loads
        weights into a model built for another size), and not at all at the native size, where outputs stay
        bit-identical. Returns False for backbones that cannot (video ViTs, Hugging Face models)."""
        from timm.layers import Format
        from timm.models.vision_transformer import VisionTransformer

        backbone = self.backbone
        if not isinstance(backbone, VisionTransformer) or backbone.pos_embed is None:
            return False
        patch_embed = backbone.patch_embed
        patch_embed.strict_img_size, patch_embed.flatten, patch_embed.output_fmt = False, False, Format.NHWC
        backbone.dynamic_img_size = True
        return True

    def backbone_fingerprint_at(self, size: int) -> str | None:
        """The fingerprint these frozen weights have in a model built for ``size``-px inputs: timm resamples
        the position embeddings when it loads them there, so a task trained at another size on the same
        weights records this fingerprint, not ``backbone_fingerprint()``."""
        from timm.layers import resample_abs_pos_embed

        backbone = self.backbone
        if self.backbone_trains or not self.accepts_input_size(size):
            return None
        grid = size // int(backbone.patch_embed.patch_size[-1])
        prefix = 0 if getattr(backbone, "no_embed_class", False) else backbone.num_prefix_tokens
        with torch.no_grad():
            resampled = resample_abs_pos_embed(backbone.pos_embed, new_size=(grid, grid), num_prefix_tokens=prefix)
        state = float_state_dict(self.backbone)  # the float weights, also when the backbone serves in int8
        state["pos_embed"] = resampled
        return hash_tensors(sorted(state.items()))[:32]

    def backbone_spec(self) -> BackboneSpec:
        reference = next(self.backbone.parameters())
        return dataclasses.replace(self._spec, device=reference.device, dtype=reference.dtype)

    # ---- forward -----------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> AdaptedModel:
        super().train(mode)
        if not self.backbone_trains:  # a frozen backbone behaves as when it was pretrained
            self.backbone.train(False)
        return self

    def backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the backbone is given for ``x``. A video backbone also takes images, (B, C, H, W): each is seen
        as a static clip, the image in every one of its frames (the convention image weights are inflated by, so
        image and video tasks share one video backbone; an image costs what a clip costs)."""
        if self.clip_frames > 1 and x.ndim == 4:
            return x.unsqueeze(2).expand(-1, -1, self.clip_frames, -1, -1)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone tokens (after its final norm), computed through the active task's modules."""
        return self.backbone.forward_features(self.backbone_input(x))

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """What a task's head receives (before the task's own fc_norm)."""
        return self.family.pool(self.backbone, self.forward_features(x))

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.family.pool(self.backbone, tokens)
        task = self.task
        if pre_logits:
            return task.fc_norm(pooled) if task.fc_norm is not None else pooled
        return task.forward_head(pooled)

    def forward(self, x: torch.Tensor, task: str | None = None, tasks: list[str] | None = None):
        """Logits of the active task (or ``task``); with ``tasks`` (one name per sample), a list of each sample's
        logits by its own task, computed in one pass of the backbone."""
        if tasks is not None:
            return self.forward_mixed(x, tasks)
        if task is not None and task != self.active_task:
            with self.using_task(task):
                return self.forward_head(self.forward_features(x))
        return self.forward_head(self.forward_features(x))

    # ---- what a task is made of --------------------------------------------------------------------------
    def task_state_dict(self, name: str | None = None) -> dict[str, torch.Tensor]:
        """What a task file stores: the task's tensors (reference names), plus the backbone's for full."""
        task = self._get(name) if name is not None else self.task
        state = dict(task.state_dict())
        if not task.config.shares_backbone:
            state.update(self.backbone.state_dict())
        return state

    def load_task_state(
        self, tensors: dict[str, torch.Tensor], name: str | None = None, source: Any = "", assign: bool = False
    ) -> None:
        """Load ``tensors`` into a task strictly: the key sets must be equal and every shape must match.
        ``assign``: the task takes the tensors themselves (an ``empty`` task: nothing is copied; its tensors are
        then on the device and in the precision given), and what no file holds (a fixed zero buffer) is zeros."""
        task = self._get(name) if name is not None else self.task
        load_into_task(task, tensors, self.backbone, source, assign)

    def trainable_parameters(self, name: str | None = None) -> list[nn.Parameter]:
        task = self._get(name) if name is not None else self.task
        params = list(task.parameters())
        if not task.config.shares_backbone:
            params += list(self.backbone.parameters())
        return params

    def backbone_fingerprint(self) -> str | None:
        """SHA-256 over the frozen backbone's tensors (names, shapes, dtypes, bytes); None when it trains.

        Computed once and kept: it is computed again only when a backbone tensor was replaced or written in place
        (each tensor's identity and version counter are part of the cache key), so comparing the fingerprints of
        a thousand task files hashes the backbone once."""
        if self.backbone_trains:
            return None
        if self._quantized_from is not None:  # the weights' identity, not their int8 packing
            return self._quantized_from
        state = sorted(self.backbone.state_dict(keep_vars=True).items())
        key = tuple((name, id(t), t._version) for name, t in state)
        if self._fingerprint is None or self._fingerprint[0] != key:
            self._fingerprint = (key, hash_tensors(state)[:32])
        return self._fingerprint[1]

    def quantize_backbone(self, kind: str = "int8") -> int:
        """The frozen backbone's ``nn.Linear`` layers as int8 for CPU serving; returns how many were quantized.

        PyTorch's dynamic quantization run per sample (``adapted/int8.py``): weights int8, each sample's
        activations quantized on the fly, oneDNN's int8 GEMMs on a CPU with AMX, fbgemm's elsewhere. The hooks
        every task runs through move to the int8 layers with them, so adapters, prompts, LoRA/BitFit/SSF sites
        and heads stay as trained (fp32) and mixed-task batches work as before: a sample's answer does not
        depend on the others in its batch (but for a VPT task's prompt slots, which join every sample of a batch
        that holds one). The fingerprint stays that of the float weights, so the backbone check still tells
        foreign weights from these. The model then runs in fp32 around the int8 layers. Refused for a model
        whose backbone trains (full fine-tuning)."""
        if kind != "int8":
            raise AdaptFormerError(f"--quantize {kind!r}: expected int8")
        if self.backbone_trains:
            raise AdaptFormerError(
                "--quantize int8: a full fine-tuning task trains the backbone; it cannot be quantized"
            )
        if self.quantized is not None:
            return 0
        if any(p.device.type != "cpu" for p in self.backbone.parameters()):
            raise AdaptFormerError("--quantize int8: int8 backbones run on the CPU (--device cpu)")
        fingerprint = self.backbone_fingerprint()  # of the float weights, before they are packed
        count = quantize_linear_layers(self.backbone)
        self.quantized, self._quantized_from = kind, fingerprint
        return count

    def parameters_per_stage(self, name: str | None = None) -> dict[str, int]:
        """The task's parameters that belong to a block (``blocks.{i}.*``: adapters, LoRA, BitFit, SSF), summed
        per stage of the backbone (a plain ViT has one stage, ``blocks``)."""
        task = self._get(name) if name is not None else self.task
        stage_of = {index: stage.name for stage in self.stages() for index in stage.blocks}
        counts = dict.fromkeys(stage_of.values(), 0)
        for key, parameter in task.named_parameters():
            parts = key.split(".")
            if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
                counts[stage_of[int(parts[1])]] += parameter.numel()
        return counts

    def parameter_report(self, name: str | None = None) -> ParameterReport:
        task = self._get(name) if name is not None else self.task
        backbone = sum(p.numel() for p in self.backbone.parameters())
        own = sum(p.numel() for p in task.parameters())
        trainable = own + (backbone if not task.config.shares_backbone else 0)
        groups = {"adapters": 0, "prompts": 0, "head": 0, "norms": 0, **task.parameter_groups()}
        return ParameterReport(total=backbone + own, trainable=trainable, frozen=backbone + own - trainable, **groups)

    # ---- conveniences that make the adapted model read like the timm model it wraps ------------------------
    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def classes(self) -> list[str]:
        return self.task.classes

    @property
    def config(self) -> MethodConfig:
        return self.task.config

    @property
    def head(self) -> nn.Module:
        return self.task.head

    @property
    def blocks(self) -> list[nn.Module]:
        """The backbone's blocks in order (a hierarchical model's stages laid end to end)."""
        return list(self._blocks)

    @property
    def embed_dim(self) -> int:
        """Width of the first block's tokens (what task files record as the backbone's width)."""
        return embed_dim_of(self.backbone, self.anatomy)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        return getattr(self.backbone, "pretrained_cfg", None) or {}

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for ``pretrained_cfg``."""
        return self.pretrained_cfg

    @property
    def num_features(self) -> int:
        """Width of the pooled features every task's head receives."""
        return self.anatomy.feature_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: recompute each block's activations in the backward pass instead of storing them, the
        task's adapters, prompts and updates included (``checkpointing.py``); gradients are unchanged."""
        checkpoint_blocks(self._blocks, enable)
        self.grad_checkpointing = bool(enable)

    def get_classifier(self) -> nn.Module:
        """The active task's classifier (its Linear layer)."""
        head = self.task.head
        return head[-1] if isinstance(head, nn.Sequential) else head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's: a new head for the active task with ``num_classes`` classes, named ``"0"``, ``"1"``, ...
        (``global_pool``: the backbone pools as it was built to; only None is accepted)."""
        if global_pool is not None:
            raise AdaptFormerError("reset_classifier: global_pool: the backbone's pooling is fixed; pass None")
        if not is_int(num_classes, 1):
            raise AdaptFormerError(f"num_classes: expected a positive integer, got {num_classes!r}")
        self.task.reset_head(num_classes)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, *args: Any, task: str | None = None, **kwargs
    ):
        """Features at chosen blocks, through the active task (or ``task``), for dense-prediction necks.

        On a timm backbone this is the backbone's own ``forward_intermediates`` with its signature (``indices``,
        ``norm``, ``stop_early``, ``output_fmt``, ``intermediates_only``, ...): the same shapes, the adapted
        values. On others (Hugging Face, found models) it returns the outputs of the blocks at ``indices`` (an
        int: the last n; a list: those blocks), as ``(final features, [intermediates])`` or, with
        ``intermediates_only=True``, the list."""
        name = task or self.active_task
        if name is not None and self.tasks[name].keeps_prompts_between_blocks():
            raise AdaptFormerError(
                f"task {name}: its prompts stay in the sequence from block to block (vpt_mode shallow), so the "
                "blocks' outputs are not the backbone's tokens; use vpt_mode deep or kv for intermediates"
            )
        context = self.using_task(name) if name is not None else contextlib.nullcontext()
        with context:
            own = getattr(self.backbone, "forward_intermediates", None)
            if own is not None and not isinstance(self.backbone, HFBackbone):
                return own(self.backbone_input(x), indices, *args, **kwargs)
            return self._block_outputs(x, indices, **kwargs)

    def _block_outputs(self, x: torch.Tensor, indices, intermediates_only: bool = False, **unused: Any):
        from timm.models._features import feature_take_indices

        if unused:
            raise AdaptFormerError(f"forward_intermediates: {sorted(unused)} apply to timm backbones only")
        take, _ = feature_take_indices(self.depth, indices)
        outputs: dict[int, torch.Tensor] = {}
        handles = [
            self._blocks[i].register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, first_tensor(out)))
            for i in take
        ]
        try:
            final = self.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()
        intermediates = [outputs[i] for i in take]
        return intermediates if intermediates_only else (final, intermediates)


def describe_backbone(backbone: nn.Module, family: Family, anatomy: Anatomy, fc_norm: nn.Module | None) -> BackboneSpec:
    """What a task is told of ``backbone`` (read off its anatomy and family; the backbone is not changed)."""
    reference = next(backbone.parameters())
    return BackboneSpec(
        dim=anatomy.feature_dim,
        depth=len(anatomy.blocks),
        key_value_dim=key_value_dim(anatomy),
        fc_norm=fc_norm,
        device=reference.device,
        dtype=reference.dtype,
        sites=sites_per_block(anatomy),  # what LoRA/BitFit/SSF size their tensors by
        no_prompts=family.no_prompts and f"{class_name(backbone)}: {family.no_prompts}",
        widths=anatomy.widths(),
        branch_widths=anatomy.branch_widths(),
        adapter_inputs=tuple(part.adapter_input for part in anatomy.parts),
        site_modules=lambda index, name: anatomy.parts[index].sites[name],
        prefix_tokens=_int_or_none(getattr(backbone, "num_prefix_tokens", None)),
        grid=_grid_of(backbone),
    )


def _int_or_none(value: Any) -> int | None:
    return int(value) if is_int(value) else None


def _grid_of(backbone: nn.Module) -> tuple[int, ...] | None:
    """The patch grid timm's (and the video) patch embeddings declare, as a tuple of ints; None elsewhere."""
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    if isinstance(grid, (tuple, list)) and grid and all(isinstance(g, int) and g > 0 for g in grid):
        return tuple(grid)
    return None


def embed_dim_of(backbone: nn.Module, anatomy: Anatomy) -> int:
    """The backbone's ``embed_dim`` where it declares one, else the width of its first block."""
    embed_dim = getattr(backbone, "embed_dim", None)
    return int(embed_dim) if isinstance(embed_dim, int) else anatomy.parts[0].in_width


def pretrained_fc_norm(backbone: nn.Module) -> nn.Module | None:
    """The backbone's fc_norm where it has trained parameters (each task starts its own copy from it)."""
    fc_norm = getattr(backbone, "fc_norm", None)
    return fc_norm if fc_norm is not None and any(True for _ in fc_norm.parameters()) else None


def load_into_task(
    task: Task, tensors: dict[str, torch.Tensor], backbone: nn.Module, source: Any = "", assign: bool = False
) -> None:
    """``AdaptedModel.load_task_state`` for a task that need not be in a model yet (``backbone``: where a full
    fine-tuning task's backbone tensors go, and the device an assigned task's placeholders take)."""
    task_own = task.state_dict(keep_vars=True)  # only shapes and dtypes are read (no detached copies made)
    own = task_own if task.config.shares_backbone else {**task_own, **backbone.state_dict(keep_vars=True)}
    check_task_tensors(own, tensors, source)
    task_keys = set(task_own)
    task.load_state_dict({k: v for k, v in tensors.items() if k in task_keys}, assign=assign)
    if assign:
        _zeros_for_meta(task, next(backbone.parameters()))
        task.requires_grad_(False)
    if not task.config.shares_backbone:
        backbone.load_state_dict({k: v for k, v in tensors.items() if k not in task_keys})


def check_task_tensors(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: Any = "") -> None:
    """``tensors`` may be loaded where ``own`` are (one line otherwise): the same keys, every shape the same, a
    float where a float is and an integer where an integer is, and no NaN or inf."""
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise AdaptFormerError(
            f"{source}: tensors do not match the task (missing {_few(missing)}, unexpected {_few(unexpected)})"
        )
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if tensors[k].shape != v.shape
    ]
    if wrong:
        raise AdaptFormerError(f"{source}: shape mismatch: {'; '.join(wrong[:3])}")
    # a float where a float is expected (any precision: files may be saved in bf16), an integer where an
    # integer is (BatchNorm's counter); and no NaN/inf, which would silently poison every prediction
    kinds = [k for k, v in own.items() if tensors[k].is_floating_point() != v.is_floating_point()]
    if kinds:
        k = kinds[0]
        raise AdaptFormerError(f"{source}: {k} has dtype {tensors[k].dtype}, expected {own[k].dtype}")
    if _all_finite([v for v in tensors.values() if v.is_floating_point()]):
        return
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise AdaptFormerError(f"{source}: non-finite values (NaN or inf) in {_few(sorted(broken))}")


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """No NaN or inf in any of ``tensors``: one pass per dtype and device (not one per tensor), by their least and
    greatest values (NaN and inf carry through both; ten times faster than ``isfinite().all()`` on a CPU)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        if t.numel():
            groups.setdefault((t.dtype, t.device), []).append(t.reshape(-1))
    for (dtype, _), group in groups.items():
        values = torch.cat(group)
        if dtype.itemsize == 1:  # 8-bit floats have no min/max kernel
            values = values.float()
        if not all(bool(bound.isfinite()) for bound in torch.aminmax(values)):
            return False
    return True


def _zeros_for_meta(module: nn.Module, reference: torch.Tensor) -> None:
    """What an assigned state left on the meta device (non-persistent buffers: VPT kv's placeholder slots, zeros by
    definition) as zeros where the backbone is."""
    for owner in module.modules():
        for key, buffer in list(owner._buffers.items()):
            if buffer is not None and buffer.is_meta:
                owner._buffers[key] = torch.zeros(buffer.shape, dtype=reference.dtype, device=reference.device)


def _check_task_name(name: str, tasks: nn.ModuleDict) -> None:
    if not isinstance(name, str) or not name or "." in name or name in ("_", ""):
        raise AdaptFormerError(f"task name: expected a non-empty name without '.', got {name!r}")
    if name in tasks:
        raise AdaptFormerError(f"task {name!r}: the model already has a task of that name")


def _few(keys: list[str]) -> str:
    return f"{keys[:3]}{'…' if len(keys) > 3 else ''}"


def adapt(
    model: nn.Module,
    method: str | None = None,
    *,
    num_classes: int | None = None,
    classes: list[str] | None = None,
    config: MethodConfig | None = None,
    task: str = DEFAULT_TASK,
    source: BackboneSource | None = None,
    objective: str = "classification",
    **options: Any,
) -> AdaptedModel:
    """Adapt a ViT: ``adapt(vit, "adaptformer", num_classes=100, bottleneck=64)``.

    ``model`` is a timm ViT, a video ViT of this library, or a Hugging Face ``ViTModel`` /
    ``ViTForImageClassification`` / ``VideoMAEModel`` / ``VideoMAEForVideoClassification``. The ViT becomes
    the frozen backbone of the returned :class:`AdaptedModel` (its hooks are installed on the ViT's own
    blocks) with one task named ``task``. Pass a method name and its options, or ``config``.
    ``num_classes`` defaults to the ViT's own class count; ``objective="multilabel"`` makes a multi-label task.
    """
    if isinstance(model, AdaptedModel):
        raise AdaptFormerError("this model is already adapted; add tasks to it with add_task(...)")
    model = as_backbone(model)
    family = family_of(model)
    if config is None:
        config = make_method_config(method or "adaptformer", **options)
    elif options or method not in (None, config.name):
        raise AdaptFormerError("pass either config=... or a method name with keyword options, not both")
    if classes is None:
        num_classes = getattr(model, "num_classes", None) if num_classes is None else num_classes
        if num_classes is None:
            raise AdaptFormerError(
                f"num_classes: {class_name(model)} has no class count of its own; pass num_classes (--num-classes)"
            )
        if not is_int(num_classes, 1):
            raise AdaptFormerError(f"num_classes: expected a positive integer, got {num_classes!r}")
        classes = [str(i) for i in range(num_classes)]
    # the task is built once on a description of the untouched backbone first: a method this family cannot host
    # is refused before the backbone loses its classifier or gains a hook
    anatomy = family.anatomy(model)
    get_method(config.name).task(config, list(classes), describe_backbone(model, family, anatomy, None))
    adapted = AdaptedModel(model, source, anatomy)
    adapted.add_task(task, config, classes, objective=objective)
    return adapted


def create_model(
    name: str,
    method: str = "adaptformer",
    num_classes: int | None = None,
    pretrained: bool = True,
    checkpoint: str | Path | None = None,
    config: MethodConfig | None = None,
    timm_kwargs: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    task: str = DEFAULT_TASK,
    objective: str = "classification",
    **options: Any,
) -> AdaptedModel:
    """``create_model("vit_base_patch16_224", "adaptformer", num_classes=100, checkpoint="mae.pth")``.

    ``name`` is a timm model name or an embedded backbone (``adaptformer/vit-tiny-cifar10``); ``checkpoint`` is
    an optional local weights file (timm, MAE or reference layout); ``options`` are the method's options.
    """
    kwargs = dict(timm_kwargs or {})
    backbone = create_backbone(name, pretrained=pretrained, checkpoint=checkpoint, **kwargs)
    source = BackboneSource(name, kwargs, Path(checkpoint).name if checkpoint is not None else None)
    if config is None:
        config = make_method_config(method, **options)
    elif options:
        raise AdaptFormerError("pass either config=... or keyword options, not both")
    return adapt(
        backbone,
        num_classes=num_classes,
        classes=classes,
        config=config,
        task=task,
        source=source,
        objective=objective,
    )
