"""glibc's allocator set for tensor work: freed blocks of up to 32 MiB kept for reuse instead of handed back.

By default glibc serves a block above a moving threshold with fresh pages from ``mmap`` and returns them when it
is freed, so every forward of a large batch page-faults its activations in again: on a ViT-B/16 batch of 32 in
bf16 on this project's 2-core test CPU, 15-20 % of the forward's time (docs/serving.md). Fixing the threshold at
glibc's largest (32 MiB) and raising the trim threshold keeps freed memory in the heap, as jemalloc and tcmalloc
do. The cost is that a process keeps the memory its busiest moment needed. The command line sets it at start
(``adaptformer ...``); ``ADAPTFORMER_MALLOC=default`` leaves glibc as it is, and so do glibc's own
``MALLOC_*_`` variables when they are set (the user's settings win). A library user may call ``tune_allocator``.

A server also frees memory on threads other than the model's (the decoders of uploads, the web framework's), and
with these thresholds each thread's arena keeps what it freed: a soak of ``adaptformer serve`` grew by about 9
MiB a minute (flat with glibc's defaults). So the arenas are limited to one per CPU (glibc's default is eight
per CPU; ``MALLOC_ARENA_MAX`` wins), and a server hands every arena's free pages back now and then, between
batches on the model thread (``PeriodicReturn``: ``malloc_trim(0)`` at most every ``RETURN_EVERY_S``), which
costs the next forward its page faults once.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable

from ..errors import AdaptFormerError

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024  # hand memory back only when a whole GiB is free at the heap's top
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")
RETURN_EVERY_S = 30.0  # a server's free memory handed back at most this often (``PeriodicReturn``)
_tuned = False  # whether this process's thresholds were set by ``tune_allocator``


def tune_allocator() -> bool:
    """Set glibc's thresholds as the module docstring says; True when they were set."""
    choice = os.environ.get("ADAPTFORMER_MALLOC", "tuned")
    if choice not in ("tuned", "default"):
        raise AdaptFormerError(f"ADAPTFORMER_MALLOC={choice!r}: expected tuned or default")
    if choice == "default" or not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # musl and other C libraries: no such library or function
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    global _tuned
    _tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if _tuned and "MALLOC_ARENA_MAX" not in os.environ:  # fewer arenas, each keeping what it freed
        mallopt(M_ARENA_MAX, max(2, os.cpu_count() or 2))
    return _tuned


def is_tuned() -> bool:
    return _tuned


def return_free_memory() -> bool:
    """Hand the free pages of every arena back to the system (glibc's ``malloc_trim(0)``); True when some were."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return bool(trim(0))


class PeriodicReturn:
    """``maybe()``, called between a server's batches: ``return_free_memory()`` when the allocator is tuned and
    ``every_s`` seconds have passed since the last time (see the module docstring)."""

    def __init__(
        self,
        every_s: float = RETURN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        tuned: Callable[[], bool] = is_tuned,
        release: Callable[[], bool] = return_free_memory,
    ):
        self.every_s, self.clock, self.tuned, self.release = every_s, clock, tuned, release
        self.last = clock()

    def maybe(self) -> bool:
        if not self.tuned() or self.clock() - self.last < self.every_s:
            return False
        self.last = self.clock()
        self.release()
        return True
