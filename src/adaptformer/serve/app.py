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
=======================  =====================================================================================

A multi-label task answers with sigmoid probabilities and adds ``"labels"``: every class at least ``threshold``
probable (query parameter, default 0.5), most probable first; single- and multi-label tasks share one batch.

Every error is JSON ``{"detail": "<one line>"}``: 400 a bad task file or request, 401 a missing or wrong API key,
403 a path outside the task directory, 404 an unknown task or file, 408 a body too slow, 409 a name taken or a
task file changed on disk, 413 too large, 415 not an image or video, 422 a request the task cannot take, 500 an
internal failure (details in the server log only), 503 busy (with ``Retry-After``). Messages never hold absolute
paths: files are named relative to the task directory. The schema is at ``/openapi.json``, docs at ``/docs``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..bank import TASK_NAME, TASK_NAME_RULE, TaskBank
from ..errors import AdaptFormerError, BusyError, UnknownTask
from ..media import Clip, MediaTooLarge, UnreadableMedia, bomb_message, decode_image
from ..objectives import DEFAULT_THRESHOLD
from .admission import Admission
from .batcher import Batcher
from .decoding import RETRY_AFTER_S, DecodePool
from .docs import add_offline_docs
from .metrics import ServerMetrics
from .page import PAGE
from .settings import ServeSettings

log = logging.getLogger("adaptformer.serve")


class LoadRequest(BaseModel):
    file: str = Field(min_length=1, max_length=1024, description="path of a task file, relative to --task-dir")
    name: str | None = Field(None, pattern=f"^{TASK_NAME.pattern}$", description=TASK_NAME_RULE)


class ErrorBody(BaseModel):
    detail: str


def _responses(*codes: int) -> dict:
    meanings = {
        400: "bad request or task file",
        401: "missing or wrong API key",
        403: "path outside the task directory, or no task directory",
        404: "no such task or file",
        408: "request body too slow",
        409: "name taken, or task file changed on disk",
        413: "upload, body or image too large",
        415: "not a readable image or video",
        422: "a request the task cannot take",
        500: "internal failure",
        503: "busy: retry after the Retry-After seconds",
    }
    return {code: {"model": ErrorBody, "description": meanings[code]} for code in codes}


COMMON = (400, 401, 408, 413, 500)
THRESHOLD_HELP = "multi-label tasks: answer every label at least this probable"


def create_app(bank: TaskBank, task_dir: str | Path | None = None, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    pool = DecodePool(settings.decode_workers, settings.max_queue)
    batcher = Batcher(bank, settings.max_batch, settings.max_wait_ms, settings.batching)
    metrics = ServerMetrics(bank, batcher, pool)
    batcher.on_batch = metrics.record_batch
    root = Path(task_dir).resolve() if task_dir else None
    scrub = _path_scrubber(root)

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
    reply = _add_error_handlers(app, metrics, scrub)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE

    @app.get("/health", responses=_responses(401))
    async def health() -> dict:
        stats = batcher.stats
        return {
            "status": "degraded" if stats.failing or not batcher.running else "ok",
            "tasks": len(bank.tasks),
            "device": str(bank.device),
            "precision": bank.precision,
            "bank": bank.stats(),
            "batching": stats.to_dict(),
            "admission": {"in_progress": pool.admitted, "max_queue": pool.max_queue, "refused": pool.refused},
        }

    @app.get("/ready", responses=_responses(503))
    async def ready() -> JSONResponse:
        ok = batcher.running and not batcher.stats.failing
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/tasks", responses=_responses(401))
    async def tasks() -> list[dict]:
        return [_public(row, root, scrub) for row in bank.infos()]

    @app.post("/tasks/refresh", responses=_responses(*COMMON, 403))
    async def refresh_tasks() -> dict:
        if root is None:
            raise HTTPException(403, "no --task-dir was given: there is no directory to scan")
        return await batcher.on_model_thread(bank.refresh)

    @app.post("/tasks", status_code=201, responses=_responses(*COMMON, 403, 404, 409))
    async def load_task(request: LoadRequest) -> dict:
        if root is None:
            raise HTTPException(403, "no --task-dir was given: the server loads no task files at run time")
        try:
            path = (root / request.file).resolve()
        except (ValueError, OSError):  # a NUL byte, a name too long for the file system, ...
            raise HTTPException(400, "file: not a usable file name") from None
        if not path.is_relative_to(root):
            raise HTTPException(403, "file: outside the task directory")
        if not path.is_file():
            raise HTTPException(404, f"{request.file}: no such task file in the task directory")
        name = request.name or path.stem
        if not TASK_NAME.fullmatch(name):
            raise HTTPException(400, f"name {name[:80]!r}: expected {TASK_NAME_RULE}")
        if bank.has(name) and Path(bank.info(name).file).resolve() != path:
            raise HTTPException(409, f"task {name!r} is already loaded from another file")
        await batcher.on_model_thread(bank.load, str(path), name)
        return _public({**bank.info(name).to_dict(), "usable": True, "resident": True}, root, scrub)

    @app.delete("/tasks/{name}", responses=_responses(401, 404))
    async def remove_task(name: str) -> dict:
        _known(name)
        try:
            from_directory = await batcher.on_model_thread(bank.remove, name)
        except UnknownTask:  # removed by a concurrent DELETE
            raise HTTPException(404, f"task {name[:80]!r}: no such task") from None
        if from_directory:  # its file stays: say when it comes back
            return {"removed": name, "note": "its file stays in the task directory: listed again once it changes"}
        return {"removed": name}

    @app.post("/predict/{task}", responses=_responses(*COMMON, 404, 409, 415, 422, 503))
    async def predict_one(
        task: str,
        file: UploadFile = File(...),
        top_k: int = Query(5, ge=1, le=1000),
        threshold: float = Query(DEFAULT_THRESHOLD, ge=0.0, le=1.0, description=THRESHOLD_HELP),
    ) -> dict:
        _known(task)
        results = await _predict(file, [task], top_k, threshold)
        return results[0]

    @app.post("/predict", responses=_responses(*COMMON, 404, 409, 415, 422, 503))
    async def predict_many(
        file: UploadFile = File(...),
        tasks: str | None = Query(None, max_length=200_000, description="comma-separated task names (default: all)"),
        top_k: int = Query(5, ge=1, le=1000),
        threshold: float = Query(DEFAULT_THRESHOLD, ge=0.0, le=1.0, description=THRESHOLD_HELP),
    ) -> dict:
        names = list(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip())) if tasks else None
        if names is not None and not names:
            raise HTTPException(422, "tasks: expected comma-separated task names")
        if not bank.tasks:
            raise HTTPException(404, "no task is loaded: load one with POST /tasks")
        limit = settings.max_tasks_per_request
        if names is not None and limit is not None and len(names) > limit:
            raise HTTPException(422, f"tasks: at most {limit} tasks per request (--max-tasks-per-request)")
        for name in names or ():
            _known(name)
        return {"results": await _predict(file, names, top_k, threshold)}

    def _known(name: str) -> None:
        reason = bank.unusable_reason(name) if TASK_NAME.fullmatch(name) else None
        if reason is not None:
            raise HTTPException(404, f"task {name!r}: listed but unusable: {reason}")
        if not (TASK_NAME.fullmatch(name) and bank.has(name)):
            shown = ", ".join(bank.tasks[:10]) + (" ..." if len(bank.tasks) > 10 else "")
            raise HTTPException(404, f"task {name[:80]!r}: no such task (loaded: {shown or 'none'})")

    async def _predict(file: UploadFile, names: list[str] | None, top_k: int, threshold: float) -> list[dict]:
        """``names`` None: every task of the upload's kind (images to image tasks, clips to video tasks)."""
        every = names is None
        with pool.admit():
            data = await file.read(settings.max_upload_bytes + 1)
            if len(data) > settings.max_upload_bytes:
                raise HTTPException(413, f"upload larger than {settings.max_upload_bytes} bytes (--max-upload-mb)")
            names, rows = await pool.run(_rows, data, file.filename or "", names)
            while True:
                try:
                    logits = await batcher.logits(rows, names)
                    break
                except AdaptFormerError:
                    # a request for every task leaves out a task that became unusable meanwhile (its file
                    # deleted, changed or broken, or the task removed): the others still answer
                    keep = [i for i, name in enumerate(names) if bank.has(name)]
                    if not every or not keep or len(keep) == len(names):
                        raise
                    names, rows = [names[i] for i in keep], [rows[i] for i in keep]
        return [bank.answer(name, values, top_k, threshold) for name, values in zip(names, logits, strict=True)]

    def _rows(data: bytes, filename: str, names: list[str] | None):
        """On a decoding thread: the upload decoded as an image or a clip, preprocessed for each task."""
        media = _decode(data, filename, settings)
        if names is None:
            kind = "video" if isinstance(media, Clip) else "image"
            names = [n for n in bank.tasks if bank.info(n).spec.modality == kind]
            limit = settings.max_tasks_per_request
            if not names:
                raise HTTPException(
                    422, f"no {kind} task is loaded; this upload is {'a clip' if kind == 'video' else 'an image'}"
                )
            if limit is not None and len(names) > limit:
                raise HTTPException(422, f"{len(names)} tasks; at most {limit} per request: choose with tasks=")
        try:
            return names, bank.input_rows(media, names)
        except (UnknownTask, MediaTooLarge, UnreadableMedia):
            raise
        except AdaptFormerError as error:  # an image for a video task, or the reverse
            raise HTTPException(422, str(error)) from None

    app.add_middleware(_Contained, reply=reply)  # the innermost: every middleware outside it sees its 500s
    app.add_middleware(Admission, settings=settings, on_refusal=lambda kind: metrics.errors.labels(kind).inc())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_Measured, metrics=metrics)
    return app


class _Contained:
    """An exception that escapes a route becomes one line of JSON (500) here and goes no further. Starlette's
    outermost handler would send the same 500 and then raise it again, and uvicorn then closes the connection
    although the response said nothing of it: the client's next request on that keep-alive connection fails."""

    def __init__(self, app, reply):
        self.app, self.reply = app, reply

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:  # the server stops (SIGTERM) and the grace period is over
            if not started:
                headers = {"Retry-After": "1", "Connection": "close"}
                await self.reply(503, "the server is shutting down; try again", "shutdown", headers)(
                    scope, receive, send
                )
            raise
        except Exception as error:
            if started:  # half a response is out: only closing the connection can end it
                raise
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            detail = f"internal error ({type(error).__name__}); see the server log"
            await self.reply(500, detail, "internal")(scope, receive, send)


class _Measured:
    """The metrics middleware as a class Starlette can stack."""

    def __init__(self, app, metrics: ServerMetrics):
        self.handle = metrics.middleware(app)

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)


def _decode(data: bytes, filename: str, settings: ServeSettings) -> Image.Image | Clip:
    """An image when Pillow recognises the header, else a clip when PyAV can read it, else 415."""
    try:
        Image.open(io.BytesIO(data)).close()  # identify only: the header, no pixels
    except Image.DecompressionBombError as error:
        raise MediaTooLarge(bomb_message(error, settings.max_pixels)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        clip = Clip(data, filename or "upload", max_frames=settings.max_clip_frames)
        try:
            clip.frames  # noqa: B018 -- probing the container is the check
        except UnreadableMedia:
            raise UnreadableMedia("not a readable image or video") from None
        return clip
    return decode_image(data, settings.max_pixels)


def _add_error_handlers(app: FastAPI, metrics: ServerMetrics, scrub):
    """Each error a route can raise as its status and one line of JSON; returns the function that makes them."""

    def reply(status: int, detail: str, kind: str, headers: dict | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        return JSONResponse({"detail": scrub(detail)}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        detail = error.detail if isinstance(error.detail, str) else str(error.detail)
        return reply(error.status_code, detail, f"http_{error.status_code}", getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        parts = []
        for item in error.errors()[:3]:
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "request"
            parts.append(f"{where}: {item.get('msg', 'invalid')}")
        return reply(422, "; ".join(parts) or "invalid request", "validation")

    @app.exception_handler(UnknownTask)
    async def unknown(request: Request, error: UnknownTask):
        return reply(404, str(error), "unknown_task")

    @app.exception_handler(BusyError)
    async def busy(request: Request, error: BusyError):
        return reply(503, str(error), "busy", {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(MediaTooLarge)
    async def too_large(request: Request, error: MediaTooLarge):
        return reply(413, str(error), "too_large")

    @app.exception_handler(UnreadableMedia)
    async def unreadable(request: Request, error: UnreadableMedia):
        return reply(415, str(error), "unreadable")

    @app.exception_handler(AdaptFormerError)
    async def refused(request: Request, error: AdaptFormerError):
        # a task file that is malformed, changed on disk or cannot be loaded
        status = 409 if "changed on disk" in str(error) else 400
        return reply(status, str(error), "task_file" if status == 400 else "changed")

    return reply


def _public(row: dict, root: Path | None, scrub) -> dict:
    """A task listing row with its file named relative to the task directory (or by its name only)."""
    path = Path(row["file"])
    try:
        shown = str(path.resolve().relative_to(root)) if root is not None else path.name
    except ValueError:
        shown = path.name
    out = {**row, "file": shown}
    if "error" in out:
        out["error"] = scrub(out["error"])
    return out


#: an absolute path's directories (kept: its last part); the server's own routes are not paths
_ABSOLUTE = re.compile(
    r"(?<![\w.])/(?!(?:tasks|predict|docs|redoc|ready|health|metrics|assets|v2)(?:/|\b))(?:[^/\s:'\"()]+/)+"
    r"(?=[^/\s:'\"()]+)"
)


def _path_scrubber(root: Path | None):
    """A function that shortens every absolute path in a message: relative to the task directory when under it,
    else to the file name."""
    prefix = f"{root}/" if root is not None else None

    def scrub(text: str) -> str:
        if prefix:
            text = text.replace(prefix, "")
        return _ABSOLUTE.sub("", text)

    return scrub
