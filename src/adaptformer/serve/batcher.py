"""Cross-task micro-batching for the server: concurrent requests, for any tasks, share one mixed-task pass.

Requests put their preprocessed rows (tensor, task) on a queue and await a future. A collector takes the first
waiting request, then keeps taking more until ``max_batch`` rows are gathered or ``max_wait_ms`` has passed, and
runs them as one mixed-task batch on the single model thread; each request gets its own rows' logits back. All
model work (inference, loading and removing tasks) runs on that one thread, off the event loop, so a model
instance never runs two things at once.

**Isolation.** A request succeeds or fails on its own. Requests whose client has gone, or whose task was removed
while they waited, are taken out before the batch runs (the latter fail with ``UnknownTask``: 404). If the batch
still raises, each of its requests is run again alone, so only the request at fault gets the error. Failures that
are not the user's (anything but an ``AdaptFormerError``) are counted: ``health()`` reports the model as
degraded while the most recent batch failed that way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..bank import TaskBank
from ..errors import AdaptFormerError, UnknownTask
from ..runtime.allocator import PeriodicReturn

log = logging.getLogger("adaptformer.serve")


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    largest: int = 0
    tasks_in_largest: int = 0
    mixed_batches: int = 0  # batches holding more than one task
    retried_batches: int = 0  # batches that raised and were run again request by request
    failed_requests: int = 0
    model_failures: int = 0  # failures that were not the request's fault (not an AdaptFormerError)
    last_model_error: str | None = None
    failing: bool = False  # the most recent batch failed with a model failure

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Request:
    rows: list[torch.Tensor]
    tasks: list[str]
    future: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(
        self, bank: TaskBank, max_batch: int = 32, max_wait_ms: float = 5.0, batching: bool = True, on_batch=None
    ):
        self.bank = bank
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.batching = batching
        self.on_batch = on_batch or (lambda rows, tasks: None)
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptformer-model")
        self.queue: asyncio.Queue[_Request] | None = None
        self.stats = BatchStats()
        self._collector: asyncio.Task | None = None
        self.memory = PeriodicReturn()  # a tuned allocator's free memory handed back between batches, now and then

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._collector = asyncio.get_running_loop().create_task(self._collect())

    @property
    def running(self) -> bool:
        return self._collector is not None and not self._collector.done()

    @property
    def ready(self) -> bool:
        """Able to answer: the model thread runs and the model is not failing (``/ready``, ``/v2/health/ready``,
        ``/health``'s status)."""
        return self.running and not self.stats.failing

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
        self.model_thread.shutdown(wait=True)

    async def on_model_thread(self, function, *args):
        """Run ``function`` (load, remove, ...) where inference runs, in order with it."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, function, *args)

    async def logits(self, rows: list[torch.Tensor], tasks: list[str]) -> list[torch.Tensor]:
        self.bank.prefetch(tasks)  # their files are read while the batches before this request run
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Request(rows, tasks, future))
        return await future

    async def _collect(self) -> None:
        while True:
            requests = [await self.queue.get()]
            size = len(requests[0].rows)
            deadline = time.monotonic() + self.max_wait
            while self.batching and size < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                requests.append(request)
                size += len(request.rows)
            try:
                await self._run(requests)
            except Exception:  # never let the collector die: every waiting request must get an answer
                log.exception("batch bookkeeping failed")
                for r in requests:
                    _fail(r, AdaptFormerError("internal error while batching; see the server log"))

    async def _run(self, requests: list[_Request]) -> None:
        live = [r for r in requests if not r.future.done() and self._tasks_known(r)]
        if not live:
            return
        try:
            logits = await self._forward(live)
        except Exception as error:
            if len(live) == 1:
                self._failed(live[0], error)
                return
            self.stats.retried_batches += 1
            for r in live:  # find the request at fault: each runs alone, the others still get answers
                try:
                    _answer(r, await self._forward([r]))
                except Exception as alone:
                    self._failed(r, alone)
            return
        start = 0
        for r in live:
            _answer(r, logits[start : start + len(r.rows)])
            start += len(r.rows)

    async def _forward(self, requests: list[_Request]) -> list[torch.Tensor]:
        rows = [row for r in requests for row in r.rows]
        tasks = [task for r in requests for task in r.tasks]
        logits = await self.on_model_thread(self._logits, rows, tasks)
        self._record(len(rows), len(set(tasks)))
        self.stats.failing = False
        return logits

    def _logits(self, rows: list[torch.Tensor], tasks: list[str]) -> list[torch.Tensor]:
        """On the model thread: the batch, then the free memory handed back if it is time (``runtime/allocator``)."""
        try:
            return self.bank.logits(rows, tasks)
        finally:
            self.memory.maybe()

    def _tasks_known(self, request: _Request) -> bool:
        missing = next((t for t in request.tasks if not self.bank.has(t)), None)
        if missing is not None:
            self._failed(request, UnknownTask(f"task {missing!r}: removed while the request waited"))
        return missing is None

    def _failed(self, request: _Request, error: Exception) -> None:
        self.stats.failed_requests += 1
        if not isinstance(error, AdaptFormerError):
            self.stats.model_failures += 1
            self.stats.failing = True
            self.stats.last_model_error = f"{type(error).__name__}: {str(error)[:200]}"
            log.error("a request failed in the model: %s", self.stats.last_model_error)
        _fail(request, error)

    def _record(self, rows: int, tasks: int) -> None:
        s = self.stats
        s.batches += 1
        s.rows += rows
        s.mixed_batches += tasks > 1
        if rows > s.largest:
            s.largest, s.tasks_in_largest = rows, tasks
        self.on_batch(rows, tasks)


def _answer(request: _Request, logits: list[torch.Tensor]) -> None:
    if not request.future.done():
        request.future.set_result(logits)


def _fail(request: _Request, error: Exception) -> None:
    if not request.future.done():
        request.future.set_exception(error)
