"""glibc's allocator set for tensor work: freed blocks of up to 32 MiB kept for reuse instead of handed back.

By default glibc serves a block above a moving threshold with fresh pages from ``mmap`` and returns them when it
is freed, so every forward of a large batch page-faults its activations in again: on a ViT-B/16 batch of 32 in
bf16 on this project's 2-core test CPU, 15-20 % of the forward's time (docs/serving.md). Fixing the threshold at
glibc's largest (32 MiB) and raising the trim threshold keeps freed memory in the heap, as jemalloc and tcmalloc
do. The cost is that a process keeps the memory its busiest moment needed. The command line sets it at start
(``adaptformer ...``); ``ADAPTFORMER_MALLOC=default`` leaves glibc as it is, and so do glibc's own
``MALLOC_*_`` variables when they are set (the user's settings win). A library user may call ``tune_allocator``.
"""

from __future__ import annotations

import ctypes
import os
import sys

from ..errors import AdaptFormerError

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024  # hand memory back only when a whole GiB is free at the heap's top
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")


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
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
