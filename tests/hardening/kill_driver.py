"""Run ``adaptformer ARGS...`` in this process and SIGKILL it at its N-th atomic file write: just before the
write, or halfway through it (the temporary file half written, not yet renamed into place).

    python kill_driver.py N before|during ARGS...

A real SIGKILL: no exception handler, ``finally`` or atexit runs, exactly as when a machine loses power or the
OOM killer strikes.
"""

import contextlib
import os
import signal
import sys

from adaptformer.cli import main
from adaptformer.utils import atomic

target, moment, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
real_atomic_path = atomic.atomic_path
writes = 0


@contextlib.contextmanager
def killing_atomic_path(path):
    global writes
    writes += 1
    if writes == target and moment == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    with real_atomic_path(path) as tmp:
        yield tmp
        if writes == target:  # "during": the temporary file is written; leave half of it and die
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)


atomic.atomic_path = killing_atomic_path
sys.exit(main(args))
