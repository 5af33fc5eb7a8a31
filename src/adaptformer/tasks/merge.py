"""Merged weights: a task of a method that is linear in the frozen weights (LoRA, DoRA, RepAdapter, FacT, BitFit,
SSF, LayerNorm tuning) folded into the backbone, so the task costs nothing at inference.

``merge_task(path, out)`` writes two files to ``out``:

* ``merged.safetensors``: the backbone's own state dict with the task folded in (``Task.merge_into`` per block):
  it loads anywhere the plain backbone loads, and through ``--checkpoint``;
* ``head.safetensors``: a head-only task (a linear probe holding the task's head, fc_norm, classes, objective and
  preprocessing) recorded for the merged backbone, so ``predict --task OUT/head.safetensors --checkpoint
  OUT/merged.safetensors`` answers as ``predict --task TASK``.

A method whose task cannot be folded (AdaptFormer, VPT, the sequential adapters, full fine-tuning) is refused
in one line saying why, before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..adapted.model import AdaptedModel, BackboneSource
from ..backbones.timm import create_backbone
from ..errors import AdaptFormerError
from ..methods.linear import LinearConfig
from ..methods.registry import get_method
from ..utils.atomic import atomic_write
from .files import load_task, preprocessing_of, save_task
from .format import method_config_of, read_task_header

MERGED_FILE = "merged.safetensors"
HEAD_FILE = "head.safetensors"


def merged_state_dict(model: AdaptedModel, task: str | None = None) -> dict[str, torch.Tensor]:
    """The backbone's state dict with ``task`` folded in; the model itself is left as it was."""
    name = task or model.active_task
    chosen = model.tasks[name]
    if chosen.merge_refusal is not None:
        raise AdaptFormerError(f"task {name}: method {chosen.config.name} cannot be merged: {chosen.merge_refusal}")
    backbone = model.backbone
    kept = {key: value.detach().clone() for key, value in backbone.state_dict().items()}
    was_training = chosen.training
    chosen.eval()  # no dropout: the fold is of the eval-mode function
    try:
        with torch.no_grad():
            for index, part in enumerate(model.anatomy.parts):
                chosen.merge_into(index, dict(part.sites))
        return {key: value.detach().clone().contiguous() for key, value in backbone.state_dict().items()}
    finally:
        with torch.no_grad():
            backbone.load_state_dict(kept, strict=True)
        chosen.train(was_training)


def refuse_unmergeable(meta: dict, path: str | Path, option: str = "") -> None:
    """One line, before any backbone is built, for a task file whose method cannot be folded into the weights;
    ``option``: the flag that asked for it (``--merge``), named first."""
    config = method_config_of(meta, path)
    refusal = get_method(config.name).task.merge_refusal
    if refusal is not None:
        prefix = f"{option}: " if option else ""
        raise AdaptFormerError(f"{prefix}task file {path}: method {config.name} cannot be merged: {refusal}")


def merge_task(
    path: str | Path,
    out: str | Path,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
) -> tuple[Path, Path]:
    """Write ``out/merged.safetensors`` and ``out/head.safetensors`` for the task file ``path`` (see the module
    docstring); returns their paths. ``checkpoint``/``pretrained``: the backbone's weights, as for ``predict``."""
    out = Path(out)
    header = read_task_header(path)  # the tensors are read once, by load_task
    refuse_unmergeable(header.meta, path)
    model = load_task(path, pretrained=pretrained, checkpoint=checkpoint)
    merged, merged_path = merged_model(model, out, metadata={"task": Path(path).name})
    spec = preprocessing_of(header.meta, model)
    extra = {**(header.meta.get("extra") or {}), "merged_from": Path(path).name}
    head_path = save_task(merged, out / HEAD_FILE, extra=extra, preprocessing=spec)
    return merged_path, head_path


def merged_model(
    model: AdaptedModel, out: str | Path, metadata: dict[str, str] | None = None
) -> tuple[AdaptedModel, Path]:
    """``model``'s active task folded into its backbone's weights, written to ``out/merged.safetensors``, and a
    new model of those weights (loaded from the file, as a user loads them) with a head-only (linear) task of the
    same name, classes and objective. ``model`` is left as it was."""
    state = merged_state_dict(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged_path = out / MERGED_FILE
    atomic_write(merged_path, lambda temporary: save_file(state, str(temporary), metadata=metadata))
    source = model.source
    merged = AdaptedModel(
        create_backbone(source.name, pretrained=False, checkpoint=merged_path, **(source.kwargs or {})),
        BackboneSource(source.name, source.kwargs, MERGED_FILE, source.family),
    )
    task = model.tasks[model.active_task]
    merged.add_task(
        model.active_task, LinearConfig(head_batchnorm=task.config.head_batchnorm), list(task.classes),
        objective=task.objective,
    )  # fmt: skip
    head_state = {k: v for k, v in task.state_dict().items() if k.startswith(("head.", "fc_norm."))}
    merged.load_task_state(head_state, model.active_task, f"task {model.active_task}")
    return merged, merged_path
