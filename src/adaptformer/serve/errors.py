"""How the server answers what goes wrong: every error one line of JSON ``{"detail": ..., "error": ...}`` (the
same line twice: FastAPI's key and the Open Inference Protocol's) with its status, the
errors counted by kind, absolute paths shortened, and an exception that escapes a route contained (``Contained``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import AdaptFormerError, BusyError, UnknownTask
from ..media import MediaTooLarge, UnreadableMedia
from .decoding import RETRY_AFTER_S
from .metrics import ServerMetrics

log = logging.getLogger("adaptformer.serve")


class ErrorBody(BaseModel):
    detail: str
    error: str  # the same line, where Open Inference Protocol clients (Triton's) read it


def responses(*codes: int) -> dict:
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


def add_error_handlers(app: FastAPI, metrics: ServerMetrics, scrub):
    """Each error a route can raise as its status and one line of JSON; returns the function that makes them."""

    def reply(status: int, detail: str, kind: str, headers: dict | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        line = scrub(detail)
        return JSONResponse({"detail": line, "error": line}, status_code=status, headers=headers)

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


class Contained:
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


#: an absolute path's directories (kept: its last part); the server's own routes are not paths
_ABSOLUTE = re.compile(
    r"(?<![\w.])/(?!(?:tasks|predict|docs|redoc|ready|health|metrics|assets|v2)(?:/|\b))(?:[^/\s:'\"()]+/)+"
    r"(?=[^/\s:'\"()]+)"
)


def path_scrubber(root: Path | None):
    """A function that shortens every absolute path in a message: relative to the task directory when under it,
    else to the file name."""
    prefix = f"{root}/" if root is not None else None

    def scrub(text: str) -> str:
        if prefix:
            text = text.replace(prefix, "")
        return _ABSOLUTE.sub("", text)

    return scrub
