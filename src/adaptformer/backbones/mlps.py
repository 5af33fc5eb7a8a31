"""The MLP modules of a model, found without running it: timm's MLP classes and the families' own (any class or
attribute named like an MLP, FFN, feed-forward or GLU: ``Mlp``, ``GluMlp``, ``SwiGLU``, ``ConvMlp``, ``LevitMlp``,
``RepVitMlp``, ``FFN``, Hugging Face's ``CLIPMLP``, ``Dinov2SwiGLUFFN``, ...) and Hugging Face's ``intermediate`` +
``output`` pairs, kept where they are shaped like one: two or more projections, every convolution 1x1 or
depthwise, no attention inside, and not in the classifier head. An MLP inside an MLP is not another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

#: classes and attributes that name an MLP (timm's ``Mlp``/``GluMlp``/``SwiGLU``/``GatedMlp``/``ConvMlp``,
#: ``LevitMlp``, ``RepVitMlp``, ``FFN``, Hugging Face's ``CLIPMLP``/``Dinov2SwiGLUFFN``/... )
MLP_NAME = re.compile(r"mlp|ffn|feed_?forward|glu", re.IGNORECASE)
MLP_ATTRIBUTES = {"mlp", "ffn", "feed_forward", "feedforward", "channel_mixer", "mlp_channels"}
#: subtrees that pool or classify, never a block's MLP
HEAD_ATTRIBUTES = {"head", "head_dist", "heads", "pooler", "classifier", "attn_pool", "pre_logits", "fc_norm"}
PROJECTIONS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


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


def mlp_widths(mlp: MLP) -> tuple[int, int, bool]:
    """(input width, output width, channels last) of an MLP, from its first and last projection."""
    projections = mlp.projections()
    first, last = projections[0], projections[-1]
    width_in = first.in_features if isinstance(first, nn.Linear) else first.in_channels
    width_out = last.out_features if isinstance(last, nn.Linear) else last.out_channels
    return int(width_in), int(width_out), isinstance(first, nn.Linear)
