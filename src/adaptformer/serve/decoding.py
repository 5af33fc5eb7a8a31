"""Decoding and preprocessing off the event loop, in a bounded pool with a bounded queue.

Decoding a large PNG or a video clip takes tens to hundreds of milliseconds of CPU; on the event loop it would
stall every other request (``/health`` included). Here it runs on ``workers`` threads. At most ``max_queue``
prediction requests are admitted at once (decoding, waiting for a batch, or running); one more is refused at
once with :class:`~adaptformer.errors.BusyError` -- the server answers 503 with ``Retry-After`` -- rather than
queueing without bound and holding every upload in memory.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from ..errors import BusyError

RETRY_AFTER_S = 1


class DecodePool:
    def __init__(self, workers: int, max_queue: int):
        self.workers, self.max_queue = workers, max_queue
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adaptformer-decode")
        self.admitted = 0  # only touched on the event loop: no lock needed
        self.refused = 0

    @contextmanager
    def admit(self):
        """Hold one of ``max_queue`` places for the whole request, or refuse it now."""
        if self.admitted >= self.max_queue:
            self.refused += 1
            raise BusyError(f"the server is busy ({self.admitted} requests in progress); retry shortly")
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
