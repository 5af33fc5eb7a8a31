"""A task bank: one frozen backbone in memory serving many tasks loaded from task files.

    bank = TaskBank.from_files(["digits.safetensors", "faces.safetensors"])
    bank.load("food=runs/food/best.safetensors")                 # more at run time; bank.remove("food")
    results = bank.predict_images([image_a, image_b], tasks=["digits", "faces"], top_k=3)

Tasks are named by their file stem (or ``NAME=FILE``). Loading refuses a task trained on other backbone weights
(fingerprint), a name already taken, and full fine-tuning (it trains the backbone, so it cannot share it). Memory
is the backbone plus each task's own few MB. Prediction preprocesses every image as each task was trained: tasks
that share their preprocessing (the usual case on one backbone) share one decoded tensor, and all (image, task)
pairs go through the backbone in one mixed-task pass (``routing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .backbones.timm import create_backbone
from .data.transforms import InputSpec, eval_transform
from .errors import AdaptFormerError
from .model import AdaptedModel, BackboneSource
from .runtime.device import pick_device
from .runtime.precision import autocast, resolve_precision
from .tasks import apply_task, preprocessing_of, read_task
from .tasks.files import recorded_backbone
from .tasks.format import task_path


@dataclass(frozen=True)
class TaskInfo:
    name: str
    file: str
    method: str
    classes: list[str]
    size_bytes: int
    spec: InputSpec

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "method": self.method,
            "classes": self.classes,
            "num_classes": len(self.classes),
            "size_bytes": self.size_bytes,
            "modality": self.spec.modality,
        }


def top_k_labels(logits: torch.Tensor, classes: list[str], k: int) -> list[dict[str, Any]]:
    """``[{"label", "prob"}, ...]`` of the k most probable classes (softmax over the task's classes)."""
    probs = logits.float().softmax(dim=0)
    top = probs.topk(min(k, len(probs)))
    return [
        {"label": classes[j], "prob": round(p, 6)}
        for p, j in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def parse_task_argument(text: str) -> tuple[str, Path]:
    """``NAME=FILE`` or ``FILE`` (named by its stem). A path that exists is a file even when it holds ``=`` (sweep
    run directories are named ``bottleneck=4``)."""
    name, sep, file = text.partition("=")
    if not sep or Path(text).is_file() or Path(f"{text}.safetensors").is_file():
        return Path(text).stem, Path(text)
    if not name or not file:
        raise AdaptFormerError(f"--task {text!r}: expected FILE or NAME=FILE")
    return name, Path(file)


class TaskBank:
    def __init__(self, model: AdaptedModel, device: torch.device, precision: str, check_backbone: bool = True):
        self.model = model.to(device).eval()
        self.device, self.precision, self.check_backbone = device, precision, check_backbone
        self.infos: dict[str, TaskInfo] = {}

    @classmethod
    def from_files(
        cls,
        tasks: list[str],
        model_name: str | None = None,
        checkpoint: str | None = None,
        pretrained: bool = True,
        device: str = "auto",
        precision: str = "auto",
        check_backbone: bool = True,
    ) -> TaskBank:
        """A bank on the backbone the first task file records (or ``model_name``), with every task loaded."""
        if not tasks:
            raise AdaptFormerError("--task: give at least one task file")
        _, first = parse_task_argument(tasks[0])
        meta, _ = read_task(first)
        backbone, source = recorded_backbone(meta, first, model_name, checkpoint, pretrained)
        model = AdaptedModel(backbone, source)
        torch_device = pick_device(device)
        bank = cls(model, torch_device, resolve_precision(precision, torch_device), check_backbone)
        for text in tasks:
            bank.load(text)
        return bank

    @classmethod
    def empty(
        cls, model_name: str, checkpoint: str | None = None, device: str = "auto", precision: str = "auto"
    ) -> TaskBank:
        """A bank with no task yet (tasks come later through ``load``)."""
        backbone = create_backbone(model_name, checkpoint=checkpoint)
        model = AdaptedModel(backbone, BackboneSource(model_name, {}, Path(checkpoint).name if checkpoint else None))
        torch_device = pick_device(device)
        return cls(model, torch_device, resolve_precision(precision, torch_device))

    # ---- tasks -----------------------------------------------------------------------------------------------
    def load(self, text: str, name: str | None = None) -> str:
        """Load ``FILE`` or ``NAME=FILE``; returns the task's name."""
        default_name, path = parse_task_argument(text)
        name = name or default_name
        if name in self.infos:
            raise AdaptFormerError(f"task {name!r}: the bank already has a task of that name ({self.infos[name].file})")
        meta, _ = read_task(path)
        if meta["method"].get("method") == "full":
            raise AdaptFormerError(f"task file {path}: full fine-tuning trains the backbone; it cannot share a bank's")
        apply_task(self.model, path, check_backbone=self.check_backbone, name=name)
        self.model.to(self.device).eval()
        self.infos[name] = TaskInfo(
            name,
            str(path),
            meta["method"]["method"],
            list(meta["classes"]),
            task_path(path).stat().st_size,
            preprocessing_of(meta, self.model),
        )
        return name

    def remove(self, name: str) -> None:
        if name not in self.infos:
            raise AdaptFormerError(f"task {name!r}: no such task (the bank has {', '.join(self.infos) or 'none'})")
        self.model.remove_task(name)
        del self.infos[name]

    @property
    def tasks(self) -> list[str]:
        return list(self.infos)

    # ---- inference --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, inputs: torch.Tensor, tasks: list[str]) -> list[torch.Tensor]:
        """One mixed-task pass: row i through task ``tasks[i]``."""
        with autocast(self.precision, self.device):
            return [row.float() for row in self.model(inputs.to(self.device), tasks=tasks)]

    def input_rows(self, image: Image.Image, tasks: list[str]) -> list[torch.Tensor]:
        """``image`` preprocessed for each task (tasks with the same preprocessing share one tensor)."""
        done: dict[InputSpec, torch.Tensor] = {}
        rows = []
        for name in tasks:
            spec = self.infos[name].spec
            if spec.modality != "image":
                raise AdaptFormerError(f"task {name!r}: a {spec.modality} task; images cannot be sent to it")
            if spec not in done:
                done[spec] = eval_transform(spec)(image.convert("RGB"))
            rows.append(done[spec])
        return rows

    def predict_images(self, images: list[Image.Image], tasks: list[str] | None = None, top_k: int = 5) -> list[dict]:
        """For every image and task: ``{"index": i, "task": name, "top_k": [{"label", "prob"}, ...]}``, in image
        order then task order."""
        tasks = tasks or self.tasks
        for name in tasks:
            if name not in self.infos:
                raise AdaptFormerError(f"task {name!r}: no such task (the bank has {', '.join(self.infos) or 'none'})")
        rows, pairs = [], []
        by_spec: dict[InputSpec, list[str]] = {}
        for name in tasks:
            by_spec.setdefault(self.infos[name].spec, []).append(name)
        for spec, names in by_spec.items():  # one decoded tensor per preprocessing, shared by its tasks
            transform = eval_transform(spec)
            tensors = [transform(image.convert("RGB")) for image in images]
            for i, tensor in enumerate(tensors):
                for name in names:
                    rows.append(tensor)
                    pairs.append((i, name))
        logits = self.logits(torch.stack(rows), [name for _, name in pairs]) if rows else []
        results = []
        for (i, name), values in zip(pairs, logits, strict=True):
            probs = values.softmax(dim=0)
            k = min(top_k, len(probs))
            top = probs.topk(k)
            classes = self.infos[name].classes
            results.append(
                {
                    "index": i,
                    "task": name,
                    "top_k": [
                        {"label": classes[j], "prob": round(p, 6)}
                        for p, j in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                    ],
                }
            )
        order = {name: k for k, name in enumerate(tasks)}
        return sorted(results, key=lambda r: (r["index"], order[r["task"]]))
