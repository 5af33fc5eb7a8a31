"""Cross-task micro-batching for the server: concurrent requests, for any tasks, share one mixed-task pass.

Requests put their preprocessed rows (tensor, task) on a queue and await a future. A collector takes the first
waiting request, then keeps taking more until ``max_batch`` rows are gathered or ``max_wait_ms`` has passed, and
runs them as one mixed-task batch on the single model thread; each request gets its own rows' logits back. All
model work (inference, loading and removing tasks) runs on that one thread, off the event loop, so a model
instance never runs two things at once.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..bank import TaskBank


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    largest: int = 0
    tasks_in_largest: int = 0
    mixed_batches: int = 0  # batches holding more than one task

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Request:
    rows: list[torch.Tensor]
    tasks: list[str]
    future: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(self, bank: TaskBank, max_batch: int = 32, max_wait_ms: float = 5.0, batching: bool = True):
        self.bank = bank
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.batching = batching
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptformer-model")
        self.queue: asyncio.Queue[_Request] | None = None
        self.stats = BatchStats()
        self._collector: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._collector = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
        self.model_thread.shutdown(wait=True)

    async def on_model_thread(self, function, *args):
        """Run ``function`` (load, remove, ...) where inference runs, in order with it."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, function, *args)

    async def logits(self, rows: list[torch.Tensor], tasks: list[str]) -> list[torch.Tensor]:
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
            await self._run(requests)

    async def _run(self, requests: list[_Request]) -> None:
        rows = [row for r in requests for row in r.rows]
        tasks = [task for r in requests for task in r.tasks]
        try:
            logits = await self.on_model_thread(self.bank.logits, torch.stack(rows), tasks)
        except Exception as error:  # hand the failure to every waiting request; keep serving
            for r in requests:
                if not r.future.done():
                    r.future.set_exception(error)
            return
        self._record(len(rows), len(set(tasks)))
        start = 0
        for r in requests:
            if not r.future.done():
                r.future.set_result(logits[start : start + len(r.rows)])
            start += len(r.rows)

    def _record(self, rows: int, tasks: int) -> None:
        s = self.stats
        s.batches += 1
        s.rows += rows
        s.mixed_batches += tasks > 1
        if rows > s.largest:
            s.largest, s.tasks_in_largest = rows, tasks
