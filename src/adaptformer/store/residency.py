"""Residency: which listed tasks have their tensors in the model now, bounded by count and by megabytes.

A task's tensors are read (once) on first use and kept in a cache of resident tasks bounded by ``max_resident``
and ``max_resident_mb``: a segmented LRU, where a task used again while resident is protected (up to
``PROTECTED_SHARE`` of the cache) and tasks used once are evicted first, least recently used first, so that under
the skewed popularity of real traffic a rarely asked task does not push out a popular one. A batch that needs
more tasks than fit runs in chunks that do (``chunks``), so the bound is never exceeded. A file that changed on
disk since it was listed (size, mtime or header) is refused; a file that can no longer be loaded (deleted,
changed or broken since it was listed) is marked unusable in the catalogue with the reason, so requests for every
task leave it out rather than fail. Evicting and reloading a task gives bit-identical outputs. ``prefetch`` reads
and builds the tasks that will be needed on an I/O thread, so loading overlaps the model's work. A store serving
in half precision keeps the tensors inside the blocks (adapters, prompts, updates) in that precision while
resident: half the memory, the same arithmetic (autocast computes in it anyway); heads and norms keep the
backbone's. One with int8 weights (``int8_weights.py``) holds the weight matrices of the Linear layers inside
the blocks as int8, one scale per row or column: half the memory again, at the cost of one rounding.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..adapted.model import AdaptedModel
from ..errors import AdaptFormerError
from ..methods.base import Task
from ..tasks.format import DTYPE_BYTES, FLOAT_DTYPES, read_task_file
from .catalogue import Catalogue
from .int8_weights import held_as_int8, int8_bytes, with_int8_weights
from .templates import MODULE_HOOK_TABLES, SHARED_EMPTY_HOOKS, TaskTemplates

#: the part of the cache that tasks used more than once may hold against tasks used once
PROTECTED_SHARE = 0.8
_SHARED_HOOKS = {key: SHARED_EMPTY_HOOKS for key in MODULE_HOOK_TABLES}


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


@dataclass
class ResidencyCounters:
    loads: int = 0
    evictions: int = 0
    hits: int = 0
    misses: int = 0
    refused_loads: int = 0


class Residency:
    """The resident tasks of one model (see the module docstring)."""

    def __init__(
        self,
        model: AdaptedModel,
        catalogue: Catalogue,
        limits: ResidencyLimits | None = None,
        block_dtype: torch.dtype | None = None,
        int8_weights: bool = False,
    ):
        self.model, self.catalogue = model, catalogue
        self.limits = limits or ResidencyLimits()
        self.counters = ResidencyCounters()
        #: the precision of the tensors inside the blocks while resident (None: the backbone's); heads keep theirs
        self.block_dtype = block_dtype
        #: the Linear layers' weight matrices inside the blocks as int8 with a few scales (``int8_weights.py``)
        self.int8_weights = int8_weights
        self._resident: OrderedDict[str, int] = OrderedDict()  # name -> bytes, least recently used first
        self._protected: OrderedDict[str, None] = OrderedDict()  # used again while resident, least recent first
        self._element_size = next(model.backbone.parameters()).element_size()
        self._block_size = torch.empty(0, dtype=block_dtype).element_size() if block_dtype else self._element_size
        #: files read ahead on an I/O thread for tasks that will be needed (``prefetch``): name -> (the listing it
        #: was read for, the future of its header and placed tensors)
        self._ahead: dict[str, tuple[object, Future]] = {}
        self._ahead_lock = threading.Lock()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptformer-io")
        # int8 weights are quantized from the file's own values, so the templates place the blocks as read
        self.templates = TaskTemplates(model, None if int8_weights else block_dtype)

    @property
    def names(self) -> list[str]:
        """Tasks whose tensors are in memory, least recently used first."""
        return list(self._resident)

    def sizes(self) -> list[int]:
        """Bytes of each resident task's tensors (a snapshot)."""
        return list(self._resident.values())

    def estimate_bytes(self, name: str) -> int:
        """Memory the task's tensors take once loaded (their element count at the model's precision)."""
        tensors = self.catalogue.listing(name).tensors
        return sum(self._bytes_of(key, entry.dtype, entry.shape) for key, entry in tensors.items())

    def _bytes_of(self, key: str, dtype: str, shape: tuple[int, ...]) -> int:
        if dtype not in FLOAT_DTYPES:  # integers (BatchNorm's counter) stay as the file has them
            return math.prod(shape) * DTYPE_BYTES[dtype]
        if self.int8_weights and held_as_int8(key, shape):
            return int8_bytes(shape)
        return math.prod(shape) * (self._block_size if key.startswith("blocks.") else self._element_size)

    def make_resident(self, names: list[str]) -> None:
        """Load the tasks of ``names`` that are not resident, evicting others (used-once first) to fit."""
        keep = set(names)
        for name in names:
            if name in self._resident:
                self.counters.hits += 1
                self._resident.move_to_end(name)
                self._protect(name)
                continue
            self.counters.misses += 1
            size = self.estimate_bytes(name)  # exact: the table the file's tensors are checked against
            self._fit(size, keep)
            self._read_in(name, size)

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
            evictable = [name for name in self._resident if name not in keep]
            victim = next((name for name in evictable if name not in self._protected), None)
            victim = victim or next(iter(evictable), None)
            if victim is None:
                raise AdaptFormerError("the tasks of one batch do not fit the residency limits together")
            self.evict(victim)

    def _protect(self, name: str) -> None:
        self._protected[name] = None
        self._protected.move_to_end(name)
        bound = max(1, int(PROTECTED_SHARE * (self.limits.max_resident or len(self._resident))))
        while len(self._protected) > bound:
            self._protected.popitem(last=False)  # the least recently used protected task is used-once again

    def prefetch(self, names: list[str]) -> None:
        """Read the files of the tasks of ``names`` that are not resident on an I/O thread, their tensors placed
        as they will be kept, so that loading them later costs only their assignment to the model (a server
        calls this for every request it queues: reading overlaps the batch that runs). At most as many as may be
        resident are read ahead; any thread may call it."""
        bound = self.limits.max_resident or 64
        for name in dict.fromkeys(names):
            listing = self.catalogue.usable_listing(name)
            with self._ahead_lock:
                if listing is None or name in self._resident or name in self._ahead or len(self._ahead) >= bound:
                    continue
                self._ahead[name] = (listing, self._io.submit(self._read, listing))

    def _read(self, listing) -> Task:
        """The listed version of a file as a task ready to be added: read, its tensors placed where and in the
        precision they will be kept, a copy of its kind's template holding them (``templates.py``). ``prefetch``
        runs this on the I/O thread, so the model's thread only adds the result."""
        header, tensors = read_task_file(listing.path, expected=listing.stamp)
        task = self.templates.task(header.meta, tensors, listing.path)
        if self.int8_weights:
            compute = self.block_dtype or next(self.model.backbone.parameters()).dtype
            task = with_int8_weights(task, compute, _SHARED_HOOKS)
        return task

    def _read_in(self, name: str, size: int) -> None:
        """Load a listed task's tensors (see the module docstring for a file that can no longer be loaded), from
        what ``prefetch`` prepared when it read this very listing."""
        listing = self.catalogue.listing(name)
        with self._ahead_lock:
            listing_then, future = self._ahead.pop(name, (None, None))
        try:
            task = future.result() if future is not None and listing_then is listing else self._read(listing)
        except AdaptFormerError as error:
            self.counters.refused_loads += 1
            self.catalogue.mark_unusable(name, str(error))
            raise
        self.model.insert_task(name, task, activate=False)
        if self.int8_weights:  # what it holds, should a plugin's layer escape the rule the estimate sizes files by
            size = sum(t.nbytes for t in (*task.parameters(), *task.buffers()))
        self._resident[name] = size
        self.counters.loads += 1

    def evict(self, name: str) -> None:
        self._protected.pop(name, None)
        if self._resident.pop(name, None) is not None:
            self.model.remove_task(name)
            self.counters.evictions += 1

    def chunks(self, names: list[str]) -> list[list[str]]:
        """``names`` in consecutive groups that each fit the residency limits."""
        chunks: list[list[str]] = [[]]
        size = 0
        for name in names:
            need = self.estimate_bytes(name)
            count_full = self.limits.max_resident is not None and len(chunks[-1]) >= self.limits.max_resident
            if chunks[-1] and (count_full or size + need > self.limits.max_bytes):
                chunks.append([])
                size = 0
            chunks[-1].append(name)
            size += need
        return chunks
