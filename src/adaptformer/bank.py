"""A task bank: one frozen backbone serving any number of task files, loaded on demand behind an LRU.

    bank = TaskBank.open(task_dir="tasks/", max_resident=64)      # lists every task file: headers only
    bank.infos()                                                 # every task, resident or not, usable or not
    results = bank.predict_images([image_a, image_b], tasks=["digits", "faces"], top_k=3)
    bank.refresh()                                               # files added to (or removed from) the directory
    bank.stats()                                                 # resident tasks, loads, evictions, hit rate, MB

**Listing** reads each file's safetensors header only (``tasks.format.read_task_header``) and checks from it what
can be checked without tensors: the format, the method (full fine-tuning trains the backbone, so it cannot share
one), the class names, the architecture and the backbone fingerprint (compared as a string: the model hashes its
frozen weights once). A file that fails is listed as unusable with its reason and never stops the others.

**Residency.** A task's tensors are read (once) on first use and kept in an LRU of resident tasks bounded by count
(``max_resident``) and by megabytes (``max_resident_mb``). A batch that needs more tasks than fit runs in chunks
that do, so the bound is never exceeded. A file that changed on disk since it was listed (size, mtime or header)
is refused until ``refresh()`` lists it again; evicting and reloading a task gives bit-identical outputs.

**Prediction** preprocesses every image as each task was trained: tasks that share their preprocessing (the
usual case on one backbone) share one decoded tensor, and all (image, task) pairs go through the backbone in one
mixed-task pass (``routing.py``).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .adapted.model import AdaptedModel, BackboneSource
from .backbones.timm import create_backbone
from .data.transforms import InputSpec
from .errors import AdaptFormerError, UnknownTask
from .media import Clip, image_tensor
from .objectives import DEFAULT_THRESHOLD, get_objective
from .runtime.device import pick_device
from .runtime.precision import autocast, resolve_precision
from .tasks import preprocessing_of
from .tasks.files import apply_task_tensors, check_fits, recorded_backbone
from .tasks.format import TaskHeader, read_task_file, read_task_header, task_path

# Task names: safe in a URL path, a file name, a log line and a metric label. No '.': the model keys its tasks in
# a ModuleDict, where a dot separates submodules.
TASK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TASK_NAME_RULE = "1-64 letters, digits, '-' or '_'"


@dataclass(frozen=True)
class TaskInfo:
    name: str
    file: str
    method: str
    classes: list[str]
    size_bytes: int
    spec: InputSpec
    objective: str = "classification"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "method": self.method,
            "classes": self.classes,
            "num_classes": len(self.classes),
            "size_bytes": self.size_bytes,
            "modality": self.spec.modality,
            "objective": self.objective,
        }


@dataclass
class _Entry:
    """A listed task file: usable (``info``) or not (``error``)."""

    name: str
    path: Path
    header: TaskHeader | None
    info: TaskInfo | None = None
    error: str | None = None
    from_directory: bool = False  # found by scanning the task directory (``refresh`` may drop it)
    stat: tuple[int, int] | None = None  # (size, mtime_ns) when listed: a refresh re-lists only a changed file


@dataclass
class BankCounters:
    loads: int = 0
    evictions: int = 0
    hits: int = 0
    misses: int = 0
    refused_loads: int = 0


def parse_task_argument(text: str) -> tuple[str, Path]:
    """``NAME=FILE`` or ``FILE`` (named by its stem). A path that exists is a file even when it holds ``=`` (sweep
    run directories are named ``bottleneck=4``)."""
    name, sep, file = text.partition("=")
    if not sep or Path(text).is_file() or Path(f"{text}.safetensors").is_file():
        return Path(text).stem, Path(text)
    if not name or not file:
        raise AdaptFormerError(f"--task {text!r}: expected FILE or NAME=FILE")
    return name, Path(file)


def directory_files(task_dir: str | Path) -> list[Path]:
    """The task files of a directory (``*.safetensors`` directly in it), in name order."""
    root = Path(task_dir)
    if not root.is_dir():
        raise AdaptFormerError(f"--task-dir {task_dir}: not a directory")
    return sorted(p for p in root.glob("*.safetensors") if p.is_file())


def outside(path: Path, root: Path) -> bool:
    """Whether ``path`` (a symbolic link, or a name with ``..``) leads out of the directory ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return True
    return False


def file_stat(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


@dataclass
class ResidencyLimits:
    """How many tasks may have their tensors in memory at once (None: no bound)."""

    max_resident: int | None = None
    max_resident_mb: float | None = None

    def __post_init__(self) -> None:
        if self.max_resident is not None and (isinstance(self.max_resident, bool) or self.max_resident < 1):
            raise AdaptFormerError(f"--max-resident: expected a positive number of tasks, got {self.max_resident}")
        if self.max_resident_mb is not None and not (self.max_resident_mb > 0 and math.isfinite(self.max_resident_mb)):
            raise AdaptFormerError(f"--max-resident-mb: expected a positive number, got {self.max_resident_mb}")

    @property
    def max_bytes(self) -> float:
        return self.max_resident_mb * 2**20 if self.max_resident_mb is not None else math.inf


class TaskBank:
    def __init__(
        self,
        model: AdaptedModel,
        device: torch.device,
        precision: str,
        check_backbone: bool = True,
        limits: ResidencyLimits | None = None,
        task_dir: str | Path | None = None,
    ):
        self.model = model.to(device).eval()
        self.model.enable_any_input_size()  # tasks trained at other input sizes share the backbone
        self._native = self.model.input_spec()  # what the backbone takes: checked for every listed file
        self.device, self.precision, self.check_backbone = device, precision, check_backbone
        self.limits = limits or ResidencyLimits()
        self.task_dir = Path(task_dir) if task_dir is not None else None
        self._entries: dict[str, _Entry] = {}
        #: directory files removed by ``remove`` -> their stat then: a refresh lists them again only once changed
        self._removed: dict[Path, tuple[int, int] | None] = {}
        self._resident: OrderedDict[str, int] = OrderedDict()  # name -> bytes, least recently used first
        self.counters = BankCounters()
        self._element_size = next(self.model.backbone.parameters()).element_size()
        for task in list(self.model.tasks):  # a model handed over with tasks: the bank lists only its own
            self.model.remove_task(task)

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
    ) -> TaskBank:
        """A bank listing the ``tasks`` files (``FILE`` or ``NAME=FILE``; refused in one line when unusable) and
        every task file of ``task_dir`` (an unusable one is listed with its reason), on the backbone ``model_name``
        or, by default, the one the first task file records. Nothing is loaded until a task is used."""
        files = directory_files(task_dir) if task_dir is not None else []
        if model_name is None:
            first = _first_description(tasks, files)
            if first is None:
                where = f"--task-dir {task_dir} holds no usable task file" if task_dir else "no task file given"
                raise AdaptFormerError(f"{where}: pass --model to start with no task")
            backbone, source = recorded_backbone(first.meta, first.path, None, checkpoint, pretrained)
        else:
            backbone = create_backbone(model_name, pretrained=pretrained, checkpoint=checkpoint)
            source = BackboneSource(model_name, {}, Path(checkpoint).name if checkpoint else None)
        torch_device = pick_device(device)
        bank = cls(
            AdaptedModel(backbone, source),
            torch_device,
            resolve_precision(precision, torch_device),
            check_backbone,
            limits,
            task_dir,
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

    # ---- listing ---------------------------------------------------------------------------------------------
    def add(self, text: str, name: str | None = None) -> str:
        """List ``FILE`` or ``NAME=FILE`` (header only; refused in one line when unusable); returns its name."""
        default_name, path = parse_task_argument(text)
        name = name or default_name
        if self.has(name):
            taken = self._entries[name].path
            if _same_file(taken, path):
                return name
            raise AdaptFormerError(f"task {name!r}: the bank already has a task of that name ({taken})")
        entry = self._list(name, task_path(path) if not path.is_file() else path)
        if entry.error is not None:
            raise AdaptFormerError(entry.error)
        self._entries[name] = entry
        return name

    def load(self, text: str, name: str | None = None) -> str:
        """List a task file and load its tensors now (every check, tensors included, before it serves). A file
        already listed under that name is just made resident."""
        listed = self.has(name or parse_task_argument(text)[0])
        name = self.add(text, name)
        try:
            self._make_resident([name])
            self._probe(name)
        except Exception:
            self._evict(name)  # whatever failed, nothing of the task stays in the model
            if not listed:
                self._entries.pop(name, None)
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
        changes: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
        if self.task_dir is None:
            return changes
        on_disk = {path.stem: path for path in directory_files(self.task_dir)}
        for path, stat in list(self._removed.items()):
            if path.stem not in on_disk or file_stat(path) != stat:  # gone or changed: forgotten as removed
                del self._removed[path]
        for name, entry in list(self._entries.items()):
            if not entry.from_directory:
                continue
            if name not in on_disk or on_disk[name] != entry.path:
                self._forget(name)
                changes["removed"].append(name)
        for name, path in on_disk.items():
            entry = self._entries.get(name)
            if path in self._removed or entry is not None and not entry.from_directory:
                continue  # removed on purpose and unchanged; or a name given explicitly wins over the file
            if entry is not None and entry.stat is not None and entry.stat == file_stat(path):
                continue  # unchanged, usable or not: nothing to say
            fresh = self._list(name, path)
            fresh.from_directory = True
            if entry is not None:
                self._evict(name)
                changes["changed"].append(name)
            else:
                changes["added"].append(name)
            self._entries[name] = fresh
        return changes

    def _list(self, name: str, path: Path) -> _Entry:
        entry = self._listed(name, path)
        entry.stat = file_stat(path)
        return entry

    def _listed(self, name: str, path: Path) -> _Entry:
        if not TASK_NAME.fullmatch(name):
            return _Entry(name, path, None, error=f"task name {name[:80]!r}: expected {TASK_NAME_RULE}")
        if self.task_dir is not None and path.parent == self.task_dir and outside(path, self.task_dir):
            return _Entry(name, path, None, error=f"task file {path}: a link to a file outside the task directory")
        try:
            header = read_task_header(path)
        except AdaptFormerError as error:
            return _Entry(name, path, None, error=str(error))
        meta = header.meta
        try:
            if meta["method"].get("method") == "full":
                raise AdaptFormerError(f"task file {path}: full fine-tuning trains the backbone; it cannot share one")
            check_fits(self.model, meta, path, self.check_backbone)
            try:
                spec = preprocessing_of(meta, self.model)
            except AdaptFormerError as error:
                raise AdaptFormerError(f"task file {path}: preprocessing: {error}") from None
            self._check_input(spec, path)
        except AdaptFormerError as error:
            return _Entry(name, path, header, error=str(error))
        except (KeyError, TypeError, ValueError) as error:
            return _Entry(name, path, header, error=f"task file {path}: malformed description ({error})")
        objective = get_objective(meta.get("objective")).name
        info = TaskInfo(name, str(path), meta["method"]["method"], list(meta["classes"]), header.size, spec, objective)
        return _Entry(name, path, header, info)

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
        """Drop a task. A file of the task directory stays dropped until it changes on disk (a refresh would
        otherwise list it again at once); returns whether it was one."""
        if name not in self._entries:
            raise UnknownTask(f"task {name!r}: no such task (the bank has {self._names()})")
        entry = self._entries[name]
        if entry.from_directory:
            self._removed[entry.path] = file_stat(entry.path)
        self._forget(name)
        return entry.from_directory

    def _forget(self, name: str) -> None:
        self._evict(name)
        del self._entries[name]

    @property
    def tasks(self) -> list[str]:
        """The usable tasks, resident or not. Like every read here, it iterates a snapshot (``list`` copies a dict
        while holding the GIL), so the event loop may read while the model thread lists, loads and evicts."""
        return [name for name, entry in list(self._entries.items()) if entry.info is not None]

    def info(self, name: str) -> TaskInfo:
        entry = self._entries.get(name)
        if entry is None or entry.info is None:
            why = f": {entry.error}" if entry is not None else f" (the bank has {self._names()})"
            raise UnknownTask(f"task {name!r}: no such usable task{why}")
        return entry.info

    def unusable_reason(self, name: str) -> str | None:
        """Why a listed task cannot be used (its file's problem), or None (usable, or not listed)."""
        entry = self._entries.get(name)
        return entry.error if entry is not None and entry.info is None else None

    def has(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and entry.info is not None

    def infos(self) -> list[dict[str, Any]]:
        """Every listed task: its description and whether it is resident; unusable ones with their reason."""
        rows = []
        resident = set(self._resident)
        for name, entry in list(self._entries.items()):
            if entry.info is not None:
                rows.append({**entry.info.to_dict(), "usable": True, "resident": name in resident})
            else:
                rows.append({"name": name, "file": str(entry.path), "usable": False, "error": entry.error})
        return rows

    def _names(self) -> str:
        names = self.tasks
        shown = ", ".join(names[:10]) + (f", … ({len(names)} in all)" if len(names) > 10 else "")
        return shown or "none"

    # ---- residency -------------------------------------------------------------------------------------------
    @property
    def resident(self) -> list[str]:
        """Tasks whose tensors are in memory, least recently used first."""
        return list(self._resident)

    def stats(self) -> dict[str, Any]:
        c = self.counters
        uses = c.hits + c.misses
        entries, resident = list(self._entries.values()), list(self._resident.values())
        listed = sum(entry.info is not None for entry in entries)
        return {
            "listed": listed,
            "unusable": len(entries) - listed,
            "resident": len(resident),
            "resident_mb": round(sum(resident) / 2**20, 3),
            "max_resident": self.limits.max_resident,
            "max_resident_mb": self.limits.max_resident_mb,
            "loads": c.loads,
            "evictions": c.evictions,
            "refused_loads": c.refused_loads,
            "hits": c.hits,
            "misses": c.misses,
            "hit_rate": round(c.hits / uses, 4) if uses else None,
        }

    def _estimate_bytes(self, name: str) -> int:
        """Memory the task's tensors take once loaded (their element count at the model's precision)."""
        header = self._entries[name].header
        return sum(math.prod(shape) for _, shape in header.tensors.values()) * self._element_size

    def _make_resident(self, names: list[str]) -> None:
        """Load the tasks of ``names`` that are not resident, evicting least recently used others to fit."""
        for name in names:
            if name in self._resident:
                self.counters.hits += 1
                self._resident.move_to_end(name)
                continue
            self.counters.misses += 1
            self._fit(self._estimate_bytes(name), keep=set(names))
            self._read_in(name)

    def _fit(self, incoming: int, keep: set[str]) -> None:
        limits = self.limits
        if incoming > limits.max_bytes:
            raise AdaptFormerError(
                f"a task of {incoming / 2**20:.1f} MB does not fit in --max-resident-mb {limits.max_resident_mb}"
            )

        def full() -> bool:
            count = limits.max_resident is not None and len(self._resident) + 1 > limits.max_resident
            return count or sum(self._resident.values()) + incoming > limits.max_bytes

        while full():
            victim = next((name for name in self._resident if name not in keep), None)
            if victim is None:
                raise AdaptFormerError("the tasks of one batch do not fit the residency limits together")
            self._evict(victim)

    def _read_in(self, name: str) -> None:
        """Load a listed task's tensors. A file that can no longer be loaded (deleted, changed or broken since it
        was listed) is listed as unusable with the reason until the next refresh (or an explicit load), so
        requests for every task leave it out rather than fail; a request naming it gets the reason."""
        entry = self._entries[name]
        try:
            header, tensors = read_task_file(entry.path, expected=entry.header)
            apply_task_tensors(self.model, header.meta, tensors, entry.path, check_backbone=False, name=name)
        except AdaptFormerError as error:
            self.counters.refused_loads += 1
            entry.info, entry.error = None, str(error)
            raise
        task = self.model.tasks[name].eval()
        self._resident[name] = sum(t.numel() * t.element_size() for t in task.state_dict().values())
        self.counters.loads += 1

    def _evict(self, name: str) -> None:
        if self._resident.pop(name, None) is not None:
            self.model.remove_task(name)
            self.counters.evictions += 1

    def _chunks(self, names: list[str]) -> list[list[str]]:
        """``names`` in consecutive groups that each fit the residency limits."""
        chunks: list[list[str]] = [[]]
        size = 0
        for name in names:
            need = self._estimate_bytes(name)
            count_full = self.limits.max_resident is not None and len(chunks[-1]) >= self.limits.max_resident
            if chunks[-1] and (count_full or size + need > self.limits.max_bytes):
                chunks.append([])
                size = 0
            chunks[-1].append(name)
            size += need
        return chunks

    # ---- inference -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, inputs: torch.Tensor | list[torch.Tensor], tasks: list[str]) -> list[torch.Tensor]:
        """Row i through task ``tasks[i]``: one mixed-task pass per group of tasks that fits in memory at once
        (and, when rows differ in shape -- clips and images, or tasks at other input sizes -- per shape)."""
        for name in dict.fromkeys(tasks):
            self.info(name)
        rows = list(inputs)
        out: list[torch.Tensor | None] = [None] * len(tasks)
        for chunk in self._chunks(list(dict.fromkeys(tasks))):
            self._make_resident(chunk)
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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == task_path(b).resolve() or a.resolve() == b.resolve()
    except OSError:
        return False


def _first_description(tasks: list[str], files: list[Path]) -> TaskHeader | None:
    """The header of the first explicit task file (errors raised), else of the first readable directory file."""
    if tasks:
        _, path = parse_task_argument(tasks[0])
        return read_task_header(path)
    for path in files:
        try:
            return read_task_header(path)
        except AdaptFormerError:
            continue
    return None
