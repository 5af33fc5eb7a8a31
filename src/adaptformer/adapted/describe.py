"""What ``adaptformer describe`` prints: how a backbone is adapted, read off its anatomy (``backbones/anatomy.py``).

For each block: its name and class, where the adapter reads (``residual``: x', the input of the named module;
``mlp_input``: the MLP's own input) and where its output is added (the named module's output), the channel layout
there, the widths, and the operations LoRA/BitFit/SSF can modulate; the modules holding an MLP that take no
adapter, with the reason; and which methods this backbone hosts (or why not).
"""

from __future__ import annotations

from typing import Any

from ..backbones.families import class_name, stages_of
from ..errors import AdaptFormerError
from ..methods.registry import make_method_config, registered_methods
from .model import AdaptedModel


def describe_model(model: AdaptedModel, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """The description as plain data (JSON-ready); ``recorded``: a task file's backbone entry, to compare with."""
    anatomy = model.anatomy
    names = {id(m): n for n, m in model.backbone.named_modules()}
    blocks = []
    for index, (name, part) in enumerate(zip(anatomy.names, anatomy.parts, strict=True)):
        blocks.append(
            {
                "index": index,
                "name": name,
                "class": type(anatomy.blocks[index]).__name__,
                "adapter_input": part.adapter_input,
                "reads": names.get(id(part.residual_at), "?"),
                "adds_to": names.get(id(part.branch_at), "?"),
                "layout": _layout(part.residual_axis),
                "width_in": part.in_width,
                "width_out": part.out_width,
                "operations": list(part.shapes),
            }
        )
    description = {
        "model": model.source.name,
        "class": class_name(model.backbone),
        "family": model.family.name,
        "blocks": model.depth,
        "adapter_input": anatomy.adapter_input,
        "anatomy": anatomy.signature,
        "feature_dim": anatomy.feature_dim,
        "input": model.input_spec().to_dict(),
        "stages": [{"name": s.name, "width": s.width, "blocks": len(s.blocks)} for s in stages_of(anatomy.widths())],
        "block_details": blocks,
        "left_out": list(anatomy.left_out),
        "methods": hosted_methods(model),
    }
    if recorded is not None:
        description["task_file"] = {
            "anatomy": recorded.get("anatomy"),
            "adapter_input": recorded.get("adapter_input"),
            "matches": recorded.get("anatomy") in (None, anatomy.signature),
        }
    return description


def hosted_methods(model: AdaptedModel) -> dict[str, str]:
    """Each registered method: ``yes``, or the one-line reason this backbone cannot host it."""
    verdicts = {}
    spec = model.backbone_spec()
    for name, method in registered_methods().items():
        try:
            method.task(make_method_config(name), ["a", "b"], spec)
            verdicts[name] = "yes"
        except AdaptFormerError as error:
            verdicts[name] = str(error)
    return verdicts


def _layout(axis: int) -> str:
    return "channels last" if axis == -1 else f"channels at axis {axis}"


def describe_backbone_text(description: dict[str, Any]) -> str:
    """The description as the lines ``adaptformer describe`` prints."""
    spec = description["input"]
    lines = [
        f"model          {description['model']} ({description['class']}; {description['family']})",
        f"blocks         {description['blocks']}, adapter input: {description['adapter_input']} "
        f"(anatomy {description['anatomy']})",
        f"input          {spec['input_size'][-1]} px"
        + (f", {spec['frames']} frames" if spec["frames"] > 1 else "")
        + f", pooled features {description['feature_dim']}",
        "stages         "
        + ", ".join(f"{s['name']} ({s['blocks']} x width {s['width']})" for s in description["stages"]),
        "",
    ]
    for block in description["block_details"]:
        widths = f"{block['width_in']}" + (f"->{block['width_out']}" if block["width_out"] != block["width_in"] else "")
        lines.append(
            f"  {block['index']:>3} {block['name']} ({block['class']}): {block['adapter_input']} "
            f"{block['reads']} -> {block['adds_to']}, {widths}, {block['layout']}; "
            f"operations: {', '.join(block['operations']) or 'none'}"
        )
    for reason in description["left_out"]:
        lines.append(f"  left out: {reason}")
    lines.append("")
    for name, verdict in description["methods"].items():
        lines.append(f"{name:<12} {verdict}")
    if "task_file" in description:
        task = description["task_file"]
        state = "found again" if task["matches"] else f"DIFFERS (the file records {task['anatomy']})"
        lines.append(f"task file    anatomy {state}")
    return "\n".join(lines)
