"""The catalogue of a task store: which task files are listed, under which names, usable or not and why.

Listing reads each file's safetensors header only (``tasks.format.read_task_header``) and checks from it what can
be checked without tensors (``check``, given by the store: the format, the method, the class names, the
architecture and the backbone fingerprint, the input it takes). A file that fails is listed as unusable with its
reason and never stops the others. ``refresh`` scans the task directory again: new files are listed, vanished ones
dropped, a file re-read only when its size or modification time changed; a link that leads out of the directory
is listed unusable; a file removed on purpose stays removed until it changes on disk.

Every read (``tasks``, ``infos``, ``counts``) iterates a snapshot (``list`` copies a dict while holding the GIL),
so a server's event loop may read while its model thread lists, loads and evicts.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.transforms import InputSpec
from ..errors import AdaptFormerError, UnknownTask
from ..objectives import get_objective
from ..tasks.format import FileStamp, TaskHeader, TensorEntry, read_task_header, task_path
from ..tasks.hub import is_hub_task, local_task_file, parse_hub_task

# Task names: safe in a URL path, a file name, a log line and a metric label. No '.': the model keys its tasks in
# a ModuleDict, where a dot separates submodules.
TASK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TASK_NAME_RULE = "1-64 letters, digits, '-' or '_'"


@dataclass(frozen=True, slots=True)
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


@dataclass(slots=True)
class Listing:
    """A listed task file: usable (``info``) or not (``error``). Only what serving needs is kept (not the
    description: loading reads the header again), so ten thousand listings cost a few megabytes."""

    name: str
    path: Path
    stamp: FileStamp | None  # the version listed: loading refuses a file that changed since
    tensors: Mapping[str, TensorEntry] | None = None  # its tensor table (shared by files of one kind)
    info: TaskInfo | None = None
    error: str | None = None
    from_directory: bool = False  # found by scanning the task directory (``refresh`` may drop it)
    stat: tuple[int, int] | None = None  # (size, mtime_ns) when listed: a refresh re-lists only a changed file


def parse_task_argument(text: str) -> tuple[str, Path]:
    """``NAME=FILE`` or ``FILE`` (named by its stem). A path that exists is a file even when it holds ``=`` (sweep
    run directories are named ``bottleneck=4``). ``FILE`` may be ``hf:USER/NAME[@REVISION]`` (named ``NAME``):
    the task repository's file from the Hugging Face Hub's cache (``tasks/hub.py``)."""
    if is_hub_task(text):
        repo, _ = parse_hub_task(text)
        return repo.split("/")[1], local_task_file(text)
    name, sep, file = text.partition("=")
    if sep and is_hub_task(file):
        return name, local_task_file(file)
    if not sep or Path(text).is_file() or Path(f"{text}.safetensors").is_file():
        return Path(text).stem, Path(text)
    if not name or not file:
        raise AdaptFormerError(f"--task {text!r}: expected FILE or NAME=FILE")
    return name, Path(file)


def directory_files(task_dir: str | Path) -> list[Path]:
    """The task files of a directory (``*.safetensors`` directly in it), in name order (one ``scandir``: no
    ``stat`` per regular file)."""
    root = Path(task_dir)
    if not root.is_dir():
        raise AdaptFormerError(f"--task-dir {task_dir}: not a directory")
    with os.scandir(root) as entries:
        names = [e.name for e in entries if e.name.endswith(".safetensors") and _is_file(e)]
    return [root / name for name in sorted(names)]


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


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


class Catalogue:
    """The listed task files of one store (see the module docstring). ``check(meta, path)`` refuses a description
    that does not fit the store's backbone (one line) and returns the input spec the task takes."""

    def __init__(self, check: Callable[[dict, Path], InputSpec], task_dir: str | Path | None = None):
        self.check = check
        self.task_dir = Path(task_dir) if task_dir is not None else None
        self._listings: dict[str, Listing] = {}
        self._specs: dict[InputSpec, InputSpec] = {}  # one object per distinct input spec (most tasks share one)
        #: directory files removed by ``remove`` -> their stat then: a refresh lists them again only once changed
        self._removed: dict[Path, tuple[int, int] | None] = {}

    # ---- changes (the model thread) -------------------------------------------------------------------------
    def add(self, text: str, name: str | None = None) -> str:
        """List ``FILE`` or ``NAME=FILE`` (header only; refused in one line when unusable); returns its name."""
        default_name, path = parse_task_argument(text)
        name = name or default_name
        if self.has(name):
            taken = self._listings[name].path
            if _same_file(taken, path):
                return name
            raise AdaptFormerError(f"task {name!r}: the bank already has a task of that name ({taken})")
        listing = self.list(name, task_path(path) if not path.is_file() else path)
        if listing.error is not None:
            raise AdaptFormerError(listing.error)
        self._listings[name] = listing
        return name

    def refresh(self) -> tuple[dict[str, list[str]], list[str]]:
        """Scan the task directory again. Returns the names ``added``, ``removed`` and ``changed``, and the names
        whose earlier version must leave memory (removed or changed)."""
        changes: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
        if self.task_dir is None:
            return changes, []
        on_disk = {path.stem: path for path in directory_files(self.task_dir)}
        for path, stat in list(self._removed.items()):
            if path.stem not in on_disk or file_stat(path) != stat:  # gone or changed: forgotten as removed
                del self._removed[path]
        for name, listing in list(self._listings.items()):
            if listing.from_directory and (name not in on_disk or on_disk[name] != listing.path):
                del self._listings[name]
                changes["removed"].append(name)
        for name, path in on_disk.items():
            listing = self._listings.get(name)
            if path in self._removed or listing is not None and not listing.from_directory:
                continue  # removed on purpose and unchanged; or a name given explicitly wins over the file
            if listing is not None and listing.stat is not None and listing.stat == file_stat(path):
                continue  # unchanged, usable or not: nothing to say
            fresh = self.list(name, path)
            fresh.from_directory = True
            changes["changed" if listing is not None else "added"].append(name)
            self._listings[name] = fresh
        return changes, changes["removed"] + changes["changed"]

    def list(self, name: str, path: Path) -> Listing:
        """``path`` read and checked as task ``name`` (not yet added to the catalogue)."""
        listing = self._read(name, path)
        if listing.stat is None:  # unusable: the stat now, so that a refresh re-lists it only once it changes
            listing.stat = file_stat(path)
        return listing

    def _read(self, name: str, path: Path) -> Listing:
        if not TASK_NAME.fullmatch(name):
            return Listing(name, path, None, error=f"task name {name[:80]!r}: expected {TASK_NAME_RULE}")
        in_directory = self.task_dir is not None and path.parent == self.task_dir
        if in_directory and path.is_symlink() and outside(path, self.task_dir):
            return Listing(name, path, None, error=f"task file {path}: a link to a file outside the task directory")
        try:
            header = read_task_header(path)
        except AdaptFormerError as error:
            return Listing(name, path, None, error=str(error))
        meta, stamp = header.meta, header.stamp
        try:
            spec = self.check(meta, path)
        except AdaptFormerError as error:
            return Listing(name, path, stamp, error=str(error))
        except (KeyError, TypeError, ValueError) as error:
            return Listing(name, path, stamp, error=f"task file {path}: malformed description ({error})")
        spec = self._specs.setdefault(spec, spec)
        method, objective = sys.intern(meta["method"]["method"]), get_objective(meta.get("objective")).name
        info = TaskInfo(name, str(path), method, [sys.intern(c) for c in meta["classes"]], stamp.size, spec, objective)
        return Listing(name, path, stamp, header.tensors, info, stat=(stamp.size, stamp.mtime_ns))

    def remove(self, name: str) -> bool:
        """Drop a listing. A file of the task directory stays dropped until it changes on disk (a refresh would
        otherwise list it again at once); returns whether it was one."""
        listing = self._listings.get(name)
        if listing is None:
            raise UnknownTask(f"task {name!r}: no such task (the bank has {self.names()})")
        if listing.from_directory:
            self._removed[listing.path] = file_stat(listing.path)
        del self._listings[name]
        return listing.from_directory

    def forget(self, name: str) -> None:
        """Drop a listing that ``load`` added and could not load (nothing remembered)."""
        self._listings.pop(name, None)

    def mark_unusable(self, name: str, reason: str) -> None:
        """A listed file that can no longer be loaded: unusable with ``reason`` until it is listed again."""
        listing = self._listings.get(name)
        if listing is not None:
            listing.info, listing.error = None, reason

    # ---- reads (any thread) ---------------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        """The usable tasks."""
        return [name for name, listing in list(self._listings.items()) if listing.info is not None]

    def listing(self, name: str) -> Listing:
        return self._listings[name]

    def usable_listing(self, name: str) -> Listing | None:
        listing = self._listings.get(name)
        return listing if listing is not None and listing.info is not None else None

    def info(self, name: str) -> TaskInfo:
        listing = self._listings.get(name)
        if listing is None or listing.info is None:
            why = f": {listing.error}" if listing is not None else f" (the bank has {self.names()})"
            raise UnknownTask(f"task {name!r}: no such usable task{why}")
        return listing.info

    def has(self, name: str) -> bool:
        listing = self._listings.get(name)
        return listing is not None and listing.info is not None

    def unusable_reason(self, name: str) -> str | None:
        """Why a listed task cannot be used (its file's problem), or None (usable, or not listed)."""
        listing = self._listings.get(name)
        return listing.error if listing is not None and listing.info is None else None

    def infos(self, resident: set[str]) -> list[dict[str, Any]]:
        """Every listed task: its description and whether it is ``resident``; unusable ones with their reason."""
        rows = []
        for name, listing in list(self._listings.items()):
            if listing.info is not None:
                rows.append({**listing.info.to_dict(), "usable": True, "resident": name in resident})
            else:
                rows.append({"name": name, "file": str(listing.path), "usable": False, "error": listing.error})
        return rows

    def counts(self) -> tuple[int, int]:
        """(usable, unusable) listings."""
        listings = list(self._listings.values())
        usable = sum(listing.info is not None for listing in listings)
        return usable, len(listings) - usable

    def names(self) -> str:
        names = self.tasks
        shown = ", ".join(names[:10]) + (f", … ({len(names)} in all)" if len(names) > 10 else "")
        return shown or "none"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == task_path(b).resolve() or a.resolve() == b.resolve()
    except OSError:
        return False


def first_description(tasks: list[str], files: list[Path]) -> TaskHeader | None:
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
