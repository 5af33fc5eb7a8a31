"""The HTTP API: FastAPI over a task bank, with cross-task batching (``batcher.py``).

=======================  =====================================================================================
``GET /``                a page to upload an image or clip and see every task's answer
``GET /health``          ``ok`` or ``degraded`` (the model failing), device, residency, batching, admission
``GET /ready``           200 once the model thread runs and is not failing, 503 otherwise (for orchestrators)
``GET /metrics``         Prometheus metrics
``GET /tasks``           every listed task: name, classes, method, modality, file, resident; unusable ones with why
``POST /tasks``          ``{"file": "<path under the task directory>", "name": optional}``: load a task file
``POST /tasks/refresh``  scan the task directory again: new files listed, vanished ones dropped, changed re-listed
``DELETE /tasks/{name}`` remove a task
``POST /predict/{task}`` multipart ``file`` (an image, or a clip for a video task): ``{"task", "top_k"}``
``POST /predict``        multipart ``file`` (+ ``tasks=a,b`` to choose): ``{"results": [{"task", "top_k"}, ...]}``
``/v2/...``              the Open Inference Protocol (KServe v2): every task a model (``routes/inference.py``)
=======================  =====================================================================================

A multi-label task answers with sigmoid probabilities and adds ``"labels"``: every class at least ``threshold``
probable (query parameter, default 0.5), most probable first; single- and multi-label tasks share one batch.

Every error is JSON ``{"detail": "<one line>", "error": "<the same line>"}`` (``error`` is what Open Inference
Protocol clients read): 400 a bad task file or request, 401 a missing or wrong API key,
403 a path outside the task directory, 404 an unknown task or file, 408 a body too slow, 409 a name taken or a
task file changed on disk, 413 too large, 415 not an image or video, 422 a request the task cannot take, 500 an
internal failure (details in the server log only), 503 busy (with ``Retry-After``). Messages never hold absolute
paths: files are named relative to the task directory. The schema is at ``/openapi.json``, docs at ``/docs``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ..bank import TaskBank
from .admission import Admission
from .batcher import Batcher
from .context import Server
from .decoding import DecodePool
from .docs import add_offline_docs
from .errors import Contained, add_error_handlers, path_scrubber
from .metrics import ServerMetrics
from .routes import inference, predict, status, tasks
from .settings import ServeSettings


def create_app(bank: TaskBank, task_dir: str | Path | None = None, settings: ServeSettings | None = None) -> FastAPI:
    """The app over ``bank``: its routers by concern (``routes/``), its errors (``errors.py``) and, from the
    inside out, the middleware that contains exceptions, admits requests, answers CORS and measures."""
    settings = settings or ServeSettings()
    pool = DecodePool(settings.decode_workers, settings.max_queue)
    batcher = Batcher(bank, settings.max_batch, settings.max_wait_ms, settings.batching)
    metrics = ServerMetrics(bank, batcher, pool)
    batcher.on_batch = metrics.record_batch
    root = Path(task_dir).resolve() if task_dir else None
    server = Server(bank, batcher, pool, metrics, settings, root, path_scrubber(root))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()
        pool.shutdown()

    app = FastAPI(
        title="adaptformer",
        summary="many AdaptFormer tasks on one frozen backbone",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.bank, app.state.batcher, app.state.settings = bank, batcher, settings
    add_offline_docs(app)
    reply = add_error_handlers(app, metrics, server.scrub)
    for routes in (status, tasks, predict, inference):
        app.include_router(routes.router(server))
    app.add_middleware(Contained, reply=reply)  # the innermost: every middleware outside it sees its 500s
    app.add_middleware(Admission, settings=settings, on_refusal=lambda kind: metrics.errors.labels(kind).inc())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(Measured, metrics=metrics)
    return app


class Measured:
    """The metrics middleware as a class Starlette can stack."""

    def __init__(self, app, metrics: ServerMetrics):
        self.handle = metrics.middleware(app)

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)
