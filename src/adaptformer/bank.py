"""A task bank: one frozen backbone serving any number of task files, loaded on demand behind an LRU.

    bank = TaskBank.open(task_dir="tasks/", max_resident=64)      # lists every task file: headers only
    bank.infos()                                                 # every task, resident or not, usable or not
    results = bank.predict_images([image_a, image_b], tasks=["digits", "faces"], top_k=3)
    bank.refresh()                                               # files added to (or removed from) the directory
    bank.stats()                                                 # resident tasks, loads, evictions, hit rate, MB

``TaskBank`` puts the store's concerns together: the **catalogue** of listed files (``store/catalogue.py``: header
reading, checks against this backbone, refresh, unusable files with their reasons), the **residency** of their
tensors (``store/residency.py``: an LRU bounded by count and megabytes, loading, eviction) and **inference**,
here: every image preprocessed as each task was trained (tasks that share their preprocessing share one decoded
tensor) and every (image, task) pair through the backbone in one mixed-task pass (``adapted/routing.py``), in
chunks of tasks that fit the residency limits.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .adapted.model import AdaptedModel, BackboneSource
from .backbones.timm import create_backbone
from .data.transforms import InputSpec
from .errors import AdaptFormerError
from .media import Clip, image_tensor
from .objectives import DEFAULT_THRESHOLD, get_objective
from .runtime.device import pick_device
from .runtime.precision import TASK_PRECISIONS, autocast, serving_precision
from .store.catalogue import (
    TASK_NAME,
    TASK_NAME_RULE,
    Catalogue,
    TaskInfo,
    directory_files,
    first_description,
    parse_task_argument,
)
from .store.residency import Residency, ResidencyLimits
from .tasks import preprocessing_of
from .tasks.files import check_fits, recorded_backbone
from .tasks.format import method_config_of

__all__ = ["TASK_NAME", "TASK_NAME_RULE", "ResidencyLimits", "TaskBank", "TaskInfo", "parse_task_argument"]


class TaskBank:
    def __init__(
        self,
        model: AdaptedModel,
        device: torch.device,
        precision: str,
        check_backbone: bool = True,
        limits: ResidencyLimits | None = None,
        task_dir: str | Path | None = None,
        task_precision: str = "auto",
    ):
        self.model = model.to(device).eval()
        self.model.enable_any_input_size()  # tasks trained at other input sizes share the backbone
        self._native = self.model.input_spec()  # what the backbone takes: checked for every listed file
        self.device, self.precision, self.check_backbone = device, precision, check_backbone
        self._fingerprint: str | None = None  # the backbone's, during one listing pass (``_one_fingerprint``)
        for task in list(self.model.tasks):  # a model handed over with tasks: the bank lists only its own
            self.model.remove_task(task)
        #: which task files are listed, usable or not (``store/catalogue.py``)
        self.catalogue = Catalogue(self._describe, task_dir)
        #: which of them have their tensors in the model (``store/residency.py``)
        #: how resident tasks hold their block tensors (``TASK_PRECISIONS``)
        self.task_precision = task_precision
        self.residency = Residency(
            self.model, self.catalogue, limits, _block_dtype(task_precision, precision), task_precision == "int8"
        )

    @property
    def task_dir(self) -> Path | None:
        return self.catalogue.task_dir

    @property
    def limits(self) -> ResidencyLimits:
        return self.residency.limits

    @property
    def counters(self):
        return self.residency.counters

    @classmethod
    def open(
        cls,
        tasks: list[str] = (),
        task_dir: str | Path | None = None,
        model_name: str | None = None,
        checkpoint: str | None = None,
        pretrained: bool = True,
        device: str = "auto",
        precision: str = "auto",
        check_backbone: bool = True,
        limits: ResidencyLimits | None = None,
        task_precision: str = "auto",
        quantize: str | None = None,
    ) -> TaskBank:
        """A bank listing the ``tasks`` files (``FILE`` or ``NAME=FILE``; refused in one line when unusable) and
        every task file of ``task_dir`` (an unusable one is listed with its reason), on the backbone ``model_name``
        or, by default, the one the first task file records. Nothing is loaded until a task is used.
        ``quantize="int8"``: the frozen backbone's Linear layers in int8 (``AdaptedModel.quantize_backbone``)."""
        files = directory_files(task_dir) if task_dir is not None else []
        if model_name is None:
            first = first_description(tasks, files)
            if first is None:
                where = f"--task-dir {task_dir} holds no usable task file" if task_dir else "no task file given"
                raise AdaptFormerError(f"{where}: pass --model to start with no task")
            backbone, source = recorded_backbone(first.meta, first.path, None, checkpoint, pretrained)
        else:
            backbone = create_backbone(model_name, pretrained=pretrained, checkpoint=checkpoint)
            source = BackboneSource(model_name, {}, Path(checkpoint).name if checkpoint else None)
        torch_device = pick_device(device)
        resolved = serving_precision(precision, torch_device, quantize)
        model = AdaptedModel(backbone, source)
        if quantize is not None:
            model.quantize_backbone(quantize)
        bank = cls(
            model,
            torch_device,
            resolved,
            check_backbone,
            limits,
            task_dir,
            task_precision,
        )
        for text in tasks:
            bank.add(text)
        bank.refresh()
        return bank

    @classmethod
    def from_files(cls, tasks: list[str], model_name: str | None = None, checkpoint: str | None = None, **kwargs):
        """A bank of the given task files (``FILE`` or ``NAME=FILE``)."""
        if not tasks:
            raise AdaptFormerError("--task: give at least one task file")
        return cls.open(list(tasks), None, model_name, checkpoint, **kwargs)

    @classmethod
    def empty(cls, model_name: str, checkpoint: str | None = None, **kwargs) -> TaskBank:
        """A bank with no task yet (tasks come later through ``add``/``load``)."""
        return cls.open([], None, model_name, checkpoint, **kwargs)

    # ---- listing (the catalogue) ----------------------------------------------------------------------------
    def add(self, text: str, name: str | None = None) -> str:
        """List ``FILE`` or ``NAME=FILE`` (header only; refused in one line when unusable); returns its name."""
        with self._one_fingerprint():
            return self.catalogue.add(text, name)

    def load(self, text: str, name: str | None = None) -> str:
        """List a task file and load its tensors now (every check, tensors included, before it serves). A file
        already listed under that name is just made resident."""
        listed = self.has(name or parse_task_argument(text)[0])
        name = self.add(text, name)
        try:
            self.residency.make_resident([name])
            self._probe(name)
        except Exception:
            self.residency.evict(name)  # whatever failed, nothing of the task stays in the model
            if not listed:
                self.catalogue.forget(name)
            raise
        return name

    @torch.no_grad()
    def _probe(self, name: str) -> None:
        """One blank input through the task: a file whose tensors load but cannot run is refused now, at load
        time, rather than failing every request later."""
        spec = self.info(name).spec
        shape = (1, 3, spec.size, spec.size) if spec.frames == 1 else (1, 3, spec.frames, spec.size, spec.size)
        try:
            with autocast(self.precision, self.device):
                (value,) = self.model(torch.zeros(shape, device=self.device), tasks=[name])
        except Exception as error:
            raise AdaptFormerError(f"task {name!r}: cannot run on this backbone ({type(error).__name__})") from None
        if not torch.isfinite(value.float()).all():
            raise AdaptFormerError(f"task {name!r}: gives non-finite outputs")

    def refresh(self) -> dict[str, list[str]]:
        """Scan the task directory again: new files are listed, vanished ones dropped, changed ones re-listed
        (their old tensors evicted). Returns the names ``added``, ``removed`` and ``changed``."""
        with self._one_fingerprint():
            changes, stale = self.catalogue.refresh()
        for name in stale:
            self.residency.evict(name)
        return changes

    @contextmanager
    def _one_fingerprint(self):
        """The backbone's fingerprint taken once for every file one listing pass checks (confirming the model's
        cached one walks every backbone tensor: a millisecond a file, ten seconds for 10,000 files)."""
        self._fingerprint = self.model.backbone_fingerprint() if self.check_backbone else None
        try:
            yield
        finally:
            self._fingerprint = None

    def _describe(self, meta: dict[str, Any], path: Path) -> InputSpec:
        """A task file's description fits this bank's backbone; the input spec it takes (one line otherwise)."""
        config = method_config_of(meta, path)
        if not config.shares_backbone:
            raise AdaptFormerError(f"task file {path}: {config.title()} trains the backbone; its task cannot share one")
        check_fits(self.model, meta, path, self.check_backbone, self._fingerprint)
        try:
            spec = preprocessing_of(meta, self.model)
        except AdaptFormerError as error:
            raise AdaptFormerError(f"task file {path}: preprocessing: {error}") from None
        self._check_input(spec, path)
        return spec

    def _check_input(self, spec: InputSpec, path: Path) -> None:
        """The backbone takes inputs of the task's shape: its frames and (unless it resizes) its side."""
        native = self._native
        if spec.frames != native.frames and spec.frames > 1:  # images also run on a video backbone (static clips)
            takes = f"{native.frames}-frame clips" if native.frames > 1 else "images"
            has = f"{spec.frames}-frame clips" if spec.frames > 1 else "images"
            raise AdaptFormerError(f"task file {path}: takes {has}; the backbone takes {takes}")
        if spec.size != native.size and not self.model.accepts_input_size(spec.size):
            raise AdaptFormerError(
                f"task file {path}: input_size {spec.size}; the backbone takes {native.size}-px inputs only"
            )

    def remove(self, name: str) -> bool:
        """Drop a task (a directory file stays dropped until it changes on disk); returns whether it was one."""
        self.residency.evict(name)
        return self.catalogue.remove(name)

    @property
    def tasks(self) -> list[str]:
        """The usable tasks, resident or not."""
        return self.catalogue.tasks

    def info(self, name: str) -> TaskInfo:
        return self.catalogue.info(name)

    def has(self, name: str) -> bool:
        return self.catalogue.has(name)

    def unusable_reason(self, name: str) -> str | None:
        return self.catalogue.unusable_reason(name)

    def infos(self) -> list[dict[str, Any]]:
        """Every listed task: its description and whether it is resident; unusable ones with their reason."""
        return self.catalogue.infos(set(self.residency.names))

    # ---- residency --------------------------------------------------------------------------------------------
    @property
    def resident(self) -> list[str]:
        """Tasks whose tensors are in memory, least recently used first."""
        return self.residency.names

    def prefetch(self, names: list[str]) -> None:
        """Read the files of tasks about to be used on an I/O thread (``store/residency.py``); any thread."""
        self.residency.prefetch([name for name in names if self.catalogue.has(name)])

    def stats(self) -> dict[str, Any]:
        c = self.counters
        uses = c.hits + c.misses
        listed, unusable = self.catalogue.counts()
        sizes = self.residency.sizes()
        return {
            "listed": listed,
            "unusable": unusable,
            "resident": len(sizes),
            "resident_mb": round(sum(sizes) / 2**20, 3),
            "max_resident": self.limits.max_resident,
            "max_resident_mb": self.limits.max_resident_mb,
            "loads": c.loads,
            "evictions": c.evictions,
            "refused_loads": c.refused_loads,
            "hits": c.hits,
            "misses": c.misses,
            "hit_rate": round(c.hits / uses, 4) if uses else None,
        }

    # ---- inference -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, inputs: torch.Tensor | list[torch.Tensor], tasks: list[str]) -> list[torch.Tensor]:
        """Row i through task ``tasks[i]``: one mixed-task pass per group of tasks that fits in memory at once
        (and, when rows differ in shape -- clips and images, or tasks at other input sizes -- per shape)."""
        for name in dict.fromkeys(tasks):
            self.info(name)
        rows = list(inputs)
        out: list[torch.Tensor | None] = [None] * len(tasks)
        chunks = self.residency.chunks(list(dict.fromkeys(tasks)))
        for k, chunk in enumerate(chunks):
            if k + 1 < len(chunks):
                self.residency.prefetch(chunks[k + 1])  # read while this chunk runs
            self.residency.make_resident(chunk)
            members = set(chunk)
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, name in enumerate(tasks):
                if name in members:
                    by_shape.setdefault(tuple(rows[i].shape), []).append(i)
            for group in by_shape.values():
                batch = torch.stack([rows[i] for i in group]).to(self.device)
                with autocast(self.precision, self.device):
                    values = self.model(batch, tasks=[tasks[i] for i in group])
                for i, value in zip(group, values, strict=True):
                    out[i] = value.float()
        return out

    def input_rows(self, media: Image.Image | Clip, tasks: list[str]) -> list[torch.Tensor]:
        """An image or a clip preprocessed for each task (tasks with the same preprocessing share one tensor);
        an image for a video task (or a clip for an image task) is refused in one line."""
        kind = "video" if isinstance(media, Clip) else "image"
        for name in tasks:
            if self.info(name).spec.modality != kind:
                wanted = "a video clip, not an image" if kind == "image" else "an image, not a video clip"
                modality = self.info(name).spec.modality
                raise AdaptFormerError(
                    f"task {name!r}: {'an' if modality == 'image' else 'a'} {modality} task; send it {wanted}"
                )
        done: dict[InputSpec, torch.Tensor] = {}
        rows = []
        for name in tasks:
            spec = self.info(name).spec
            if spec not in done:
                done[spec] = media.tensor(spec) if isinstance(media, Clip) else image_tensor(media, spec)
            rows.append(done[spec])
        return rows

    def answer(self, name: str, logits: torch.Tensor, top_k: int = 5, threshold: float = DEFAULT_THRESHOLD) -> dict:
        """One input's answer from a task: ``{"task", "top_k": [{"label", "prob"}, ...]}`` (softmax), and for a
        multi-label task sigmoid probabilities with ``labels`` (every class at least ``threshold`` probable)."""
        info = self.info(name)
        return {"task": name, **get_objective(info.objective).answer(logits, info.classes, top_k, threshold)}

    def predict_images(
        self,
        images: list[Image.Image],
        tasks: list[str] | None = None,
        top_k: int = 5,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> list[dict]:
        """For every image and task: ``{"index": i, "task": name, "top_k": [{"label", "prob"}, ...]}``, in image
        order then task order."""
        return self.predict(images, tasks, top_k, threshold)

    def predict(
        self,
        media: list[Image.Image | Clip],
        tasks: list[str] | None = None,
        top_k: int = 5,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> list[dict]:
        """Images and clips through every chosen task of their kind (images to image tasks, clips to video
        tasks): ``{"index": i, "task": name, "top_k": [...]}`` (multi-label tasks add ``labels``, see
        :meth:`answer`) in input order, then task order. An input with no task of its kind among ``tasks`` gets
        ``{"index": i, "error": "<one line>"}`` instead."""
        chosen = tasks or self.tasks
        by_kind: dict[str, list[str]] = {"image": [], "video": []}
        for name in chosen:
            by_kind[self.info(name).spec.modality].append(name)
        rows, pairs, results = [], [], []
        for i, item in enumerate(media):
            kind = "video" if isinstance(item, Clip) else "image"
            names = by_kind[kind]
            if not names:
                results.append({"index": i, "error": f"no {kind} task among {', '.join(chosen) or 'none'}"})
                continue
            try:
                tensors = self.input_rows(item, names)
            except AdaptFormerError as error:  # an unreadable clip fails alone
                results.append({"index": i, "error": str(error)})
                continue
            rows += tensors
            pairs += [(i, name) for name in names]
        logits = self.logits(rows, [name for _, name in pairs]) if rows else []
        results += [
            {"index": i, **self.answer(name, values, top_k, threshold)}
            for (i, name), values in zip(pairs, logits, strict=True)
        ]
        order = {name: k for k, name in enumerate(chosen)}
        return sorted(results, key=lambda r: (r["index"], order.get(r.get("task"), -1)))


def _block_dtype(task_precision: str, precision: str) -> torch.dtype | None:
    """Resident tasks' block tensors: in the serving precision (``auto`` and ``int8``: bf16 or fp16 when serving
    so), or fp32."""
    if task_precision not in TASK_PRECISIONS:
        raise AdaptFormerError(f"--task-precision {task_precision!r}: expected one of {', '.join(TASK_PRECISIONS)}")
    if task_precision == "fp32":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
