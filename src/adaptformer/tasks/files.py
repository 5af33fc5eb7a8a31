"""Tasks to and from files: the few MB one task trains, saved apart from the backbone they adapt.

``save_task`` writes the active (or named) task of an :class:`~adaptformer.adapted.model.AdaptedModel`; ``apply_task``
adds a task file's task to a model (wrapping a plain timm backbone first), after checking the architecture, the
backbone fingerprint (a hash of the frozen weights, so a task trained on other pretrained weights is refused),
the exact key set and every shape. ``load_task`` also creates the recorded backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapted.model import AdaptedModel, BackboneSource, embed_dim_of, load_into_task
from ..backbones.anatomy import Anatomy
from ..backbones.families import class_name, family_of
from ..backbones.plain import as_backbone
from ..backbones.timm import create_backbone
from ..data.transforms import InputSpec
from ..errors import AdaptFormerError
from ..methods.base import Task
from ..objectives import get_objective
from ..version import __version__
from .format import FORMAT, FORMAT_VERSION, method_config_of, read_task_file, write_task
from .hub import TASK_FILE, write_task_folder


def task_metadata(
    model: AdaptedModel,
    name: str | None = None,
    extra: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    preprocessing: InputSpec | None = None,
) -> dict[str, Any]:
    """The description stored with a task. ``fingerprint`` may be passed when already known (the training loop
    hashes the frozen weights once); ``preprocessing`` defaults to the backbone's own."""
    name = name or model.active_task
    task = model.tasks[name]
    spec = preprocessing or model.input_spec()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adaptformer_version": __version__,
        "task": name,
        "method": task.config.to_dict(),
        "classes": list(task.classes),
        "num_classes": task.num_classes,
        "objective": task.objective,
        "backbone": {
            **model.source.to_dict(),
            "fingerprint": fingerprint if fingerprint is not None else model.backbone_fingerprint(),
            "embed_dim": model.embed_dim,
            "depth": model.depth,
            "class": class_name(model.backbone),  # the family it reloads through
            "adapter_input": model.anatomy.adapter_input,  # residual (x') or mlp_input (beside the MLP)
            "anatomy": model.anatomy.signature,  # what discovery found, block by block: must be found again
        },
        "preprocessing": spec.to_dict(),
        "extra": extra or {},
    }


def save_task(
    model: AdaptedModel,
    path: str | Path,
    classes: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    task: str | None = None,
    preprocessing: InputSpec | None = None,
    folder: bool = False,
) -> Path:
    """Write ``path`` (.safetensors, atomically) and its ``.json`` description; returns the weights path.
    ``classes`` renames the task's classes first (their count must match the head). ``folder=True``: ``path``
    is a folder in the Hugging Face Hub layout (``task.safetensors``, ``config.json``, a ``README.md`` model
    card: ``tasks/hub.py``), as ``adaptformer push`` uploads it."""
    _require_adapted(model)
    name = task or model.active_task
    if classes is not None:
        if len(classes) != model.tasks[name].num_classes:
            raise AdaptFormerError(
                f"classes: {len(classes)} names given for a {model.tasks[name].num_classes}-class head"
            )
        model.tasks[name].classes = list(classes)
    meta = task_metadata(model, name, extra, fingerprint, preprocessing)
    if not folder:
        return write_task(path, meta, model.task_state_dict(name))
    written = write_task(Path(path) / TASK_FILE, meta, model.task_state_dict(name))
    write_task_folder(written, path)
    return written


def apply_task(
    model: nn.Module, path: str | Path, check_backbone: bool = True, name: str | None = None
) -> AdaptedModel:
    """Add the task in ``path`` to ``model`` (an AdaptedModel, or a plain timm ViT that becomes one), make it
    the active task and load its tensors strictly. A task of the same name and method is loaded into. The file
    is read once."""
    header, tensors = read_task_file(path)
    return apply_task_tensors(model, header.meta, tensors, path, check_backbone=check_backbone, name=name)


def apply_task_tensors(
    model: nn.Module,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    path: str | Path,
    check_backbone: bool = True,
    name: str | None = None,
    block_dtype: torch.dtype | None = None,
    activate: bool = True,
) -> AdaptedModel:
    """``apply_task`` for a file already read (its description and tensors). A task that this call added and
    whose tensors are refused is removed again, so a refused file leaves nothing in the model.

    A new task is built empty and takes the file's tensors themselves (no initialisation drawn, nothing copied
    twice), on the backbone's device: its heads and norms in the backbone's precision, the tensors inside the
    blocks (adapters, prompts, LoRA updates) in ``block_dtype`` where given (a task store serving in bf16 keeps its
    resident tasks at half the memory). ``activate=False`` leaves the active task as it was (a task store, whose
    batches name their tasks, loads without switching)."""
    config = method_config_of(meta, path)
    if not isinstance(model, AdaptedModel):
        backbone = as_backbone(model)
        anatomy = family_of(backbone).anatomy(backbone)
        _check_architecture(backbone, anatomy, meta, path)
        source = meta["backbone"]
        source = BackboneSource(source["name"], source.get("kwargs") or {}, source.get("checkpoint"))
        model = AdaptedModel(backbone, source, anatomy)
    check_fits(model, meta, path, check_backbone)
    name = name or meta.get("task") or Path(path).stem
    added = name not in model.tasks
    if not added:
        existing = model.tasks[name].config
        if existing != config:
            raise AdaptFormerError(
                f"task file {path}: trained with method {config.name} ({config.describe()}), but the model's task "
                f"{name!r} is {existing.name} ({existing.describe()})"
            )
        if model.tasks[name].num_classes != meta["num_classes"]:
            raise AdaptFormerError(
                f"task file {path}: has {meta['num_classes']} classes, the model's task {name!r} has "
                f"{model.tasks[name].num_classes}"
            )
        model.tasks[name].classes = list(meta["classes"])
        model.tasks[name].objective = get_objective(meta.get("objective")).name
        if activate:
            model.set_task(name)
    elif config.shares_backbone:  # built apart and filled from the file, then added: a refusal leaves no trace
        model.insert_task(name, prepared_task(model, meta, tensors, path, block_dtype), activate=activate)
        return model
    else:
        previous = model.active_task
        objective = meta.get("objective") or "classification"
        model.add_task(name, config, meta["classes"], objective=objective, activate=activate)
    try:
        model.load_task_state(tensors, name, f"task file {path}")
    except AdaptFormerError:
        if added:
            model.remove_task(name)
            if previous is not None and previous in model.tasks:
                model.set_task(previous)
        raise
    return model


def prepared_task(
    model: AdaptedModel,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    path: str | Path,
    block_dtype: torch.dtype | None = None,
) -> Task:
    """A task of a file that shares ``model``'s backbone, built empty (no initialisation drawn) and holding the
    file's tensors themselves (placed as ``placed`` says), checked strictly, not yet added to the model
    (``model.insert_task``). Nothing of the model changes: a task store prepares tasks on its I/O thread."""
    config = method_config_of(meta, path)
    if not config.shares_backbone:
        raise AdaptFormerError(f"task file {path}: {config.title()} trains the backbone; its task cannot share one")
    objective = meta.get("objective") or "classification"
    task = model.build_task(config, meta["classes"], objective=objective, empty=True)
    tensors = all_placed(tensors, next(model.backbone.parameters()), block_dtype)
    load_into_task(task, tensors, model.backbone, f"task file {path}", assign=True)
    return task


def all_placed(
    tensors: dict[str, torch.Tensor], reference: torch.Tensor, block_dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Every tensor of a file ``placed``. A file's tensors are views of the one buffer it was read into; where
    some are cast (half-precision blocks) or moved, the rest are copied out so that the buffer is freed (else a
    30 KB head would keep a whole file's bytes in memory)."""
    kept = {key: placed(key, value, reference, block_dtype) for key, value in tensors.items()}
    if all(kept[key] is value for key, value in tensors.items()):
        return kept
    return {key: t.clone() if t is tensors[key] else t for key, t in kept.items()}


def placed(key: str, value: torch.Tensor, reference: torch.Tensor, block_dtype: torch.dtype | None) -> torch.Tensor:
    """A file's tensor where and in the precision its task keeps it (integers, BatchNorm's counter, as they are)."""
    if not value.is_floating_point():
        return value.to(reference.device)
    dtype = block_dtype if block_dtype is not None and key.startswith("blocks.") else reference.dtype
    return value.to(device=reference.device, dtype=dtype)


def recorded_backbone(
    meta: dict[str, Any],
    path: str | Path,
    model_name: str | None = None,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
) -> tuple[nn.Module, BackboneSource]:
    """The backbone a task file records (its name and keywords), or ``model_name`` instead, and its source."""
    recorded = meta["backbone"]
    name = model_name or recorded.get("name")
    if not name:
        raise AdaptFormerError(f"task file {path}: records no backbone name; pass the backbone (--model)")
    kwargs = recorded.get("kwargs") or {} if model_name is None else {}
    backbone = create_backbone(name, pretrained=pretrained, checkpoint=checkpoint, **kwargs)
    return backbone, BackboneSource(name, kwargs, Path(checkpoint).name if checkpoint else None)


def load_task(
    path: str | Path,
    backbone: nn.Module | None = None,
    pretrained: bool = True,
    checkpoint: str | Path | None = None,
    check_backbone: bool = True,
) -> AdaptedModel:
    """A ready model for a task file: the recorded backbone (or ``backbone``) with the task applied."""
    header, tensors = read_task_file(path)  # read once, and before any backbone is built
    if backbone is None:
        backbone, source = recorded_backbone(header.meta, path, checkpoint=checkpoint, pretrained=pretrained)
        backbone = AdaptedModel(backbone, source)
    return apply_task_tensors(backbone, header.meta, tensors, path, check_backbone=check_backbone)


def preprocessing_of(meta: dict[str, Any], model: nn.Module) -> InputSpec:
    """The input spec a task was trained with; what a v1 file did not record comes from the backbone."""
    spec = model.input_spec()
    recorded = meta.get("preprocessing") or {}
    if "crop_pct" in recorded:
        return InputSpec.from_dict(recorded)
    size = recorded.get("input_size")
    return spec.replace(
        size=int(size[-1]) if size else None, mean=_tuple(recorded.get("mean")), std=_tuple(recorded.get("std"))
    )


def _tuple(values):
    return tuple(values) if values else None


def _require_adapted(model: nn.Module) -> None:
    if not isinstance(model, AdaptedModel):
        raise AdaptFormerError("save_task needs an adapted model (adaptformer.adapt or create_model)")


def check_fits(
    model: AdaptedModel,
    meta: dict[str, Any],
    path: str | Path,
    check_backbone: bool = True,
    fingerprint: str | None = None,
) -> None:
    """A task file's description fits ``model``: the same architecture and, unless ``check_backbone`` is off,
    the same frozen weights (fingerprints compared as strings; the model hashes its backbone once, and a caller
    checking many files passes the ``fingerprint`` it took once instead of having it looked up per file)."""
    _check_architecture(model.backbone, model.anatomy, meta, path)
    expected = meta["backbone"]["fingerprint"]
    shares = method_config_of(meta, path).shares_backbone
    if not check_backbone or expected is None or not shares:
        return
    if model.backbone_trains or (fingerprint or model.backbone_fingerprint()) == expected:
        return
    size = ((meta.get("preprocessing") or {}).get("input_size") or [None])[-1]
    if isinstance(size, int) and model.backbone_fingerprint_at(size) == expected:
        return  # the same weights, with the position embeddings timm resampled for the task's input size
    source = meta["backbone"].get("checkpoint")
    weights = f"{meta['backbone']['name']}" + (f" from {source}" if source else "")
    raise AdaptFormerError(
        f"task file {path}: trained on other backbone weights ({weights}, fingerprint {expected}); load it "
        "onto those (--checkpoint) or pass check_backbone=False / --no-check-backbone"
    )


def _check_architecture(backbone: nn.Module, anatomy: Anatomy, meta: dict[str, Any], path: str | Path) -> None:
    """The file was made for this architecture: its class (where recorded), width, depth, and the anatomy found
    in its blocks (where recorded: discovery must find the same blocks, points and operations again)."""
    want = meta["backbone"]
    have = {"class": class_name(backbone), "embed_dim": embed_dim_of(backbone, anatomy), "depth": len(anatomy.blocks)}
    if want.get("class", have["class"]) != have["class"]:
        raise AdaptFormerError(
            f"task file {path}: made for a {want['class']} backbone ({want['name']}), the model is a {have['class']}"
        )
    if (want["embed_dim"], want["depth"]) != (have["embed_dim"], have["depth"]):
        raise AdaptFormerError(
            f"task file {path}: made for {want['name']} (width {want['embed_dim']}, depth {want['depth']}), "
            f"the model has width {have['embed_dim']}, depth {have['depth']}"
        )
    if want.get("anatomy", anatomy.signature) != anatomy.signature:
        raise AdaptFormerError(
            f"task file {path}: its backbone's blocks were found otherwise when it was made (anatomy "
            f"{want['anatomy']}, adapter input {want.get('adapter_input', '?')}; this model: {anatomy.signature}, "
            f"{anatomy.adapter_input}): a different model or library version; `adaptformer describe` shows both"
        )
