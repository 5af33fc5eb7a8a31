"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own (two apps in one process, as
in the tests, never share counters).

Counters and histograms are updated as requests pass (a pure ASGI middleware labels each by its route template,
so ``/predict/{task}`` is one series however many tasks there are; and by its method, one of the standard ones or
``OTHER``: nothing from the wire becomes a label); gauges and totals that the bank and the
batcher already keep are read when Prometheus scrapes.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

#: the methods a request is counted under; any other (a client may send any token) is counted as OTHER, so no
#: client can add series to /metrics
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    def __init__(self, bank, batcher, pool):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("adaptformer_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "adaptformer_request_seconds", "request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.errors = Counter("adaptformer_errors", "refused or failed requests by kind", ["kind"], registry=r)
        self.batch_rows = Histogram("adaptformer_batch_rows", "rows per model batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_tasks = Histogram(
            "adaptformer_batch_tasks", "distinct tasks per model batch", buckets=BATCH_BUCKETS, registry=r
        )
        Gauge("adaptformer_queue_depth", "requests waiting for a batch", registry=r).set_function(
            lambda: batcher.queue.qsize() if batcher.queue is not None else 0
        )
        Gauge("adaptformer_requests_in_progress", "prediction requests admitted", registry=r).set_function(
            lambda: pool.admitted
        )
        r.register(_BankCollector(bank))

    def middleware(self, app):
        async def measured(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            status = {"code": 500}

            async def recording_send(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            start = time.perf_counter()
            try:
                await app(scope, receive, recording_send)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                method = scope["method"] if scope["method"] in METHODS else "OTHER"
                self.requests.labels(route, method, str(status["code"])).inc()
                self.latency.labels(route).observe(time.perf_counter() - start)

        return measured

    def record_batch(self, rows: int, tasks: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_tasks.observe(tasks)


class _BankCollector:
    """Residency figures straight from ``bank.stats()`` at scrape time."""

    def __init__(self, bank):
        self.bank = bank

    def collect(self):
        stats = self.bank.stats()
        for key, help_text in (
            ("listed", "usable task files listed"),
            ("unusable", "unusable task files"),
            ("resident", "tasks with their tensors in memory"),
            ("resident_mb", "megabytes of resident task tensors"),
        ):
            yield GaugeMetricFamily(f"adaptformer_tasks_{key}", help_text, value=stats[key])
        for key in ("loads", "evictions", "refused_loads", "hits", "misses"):
            yield CounterMetricFamily(f"adaptformer_task_{key}", f"task {key.replace('_', ' ')}", value=stats[key])
