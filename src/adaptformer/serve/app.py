"""The HTTP API: FastAPI over a task bank, with cross-task batching (``batcher.py``).

=======================  =====================================================================================
``GET /``                a page to upload an image and see every task's answer
``GET /health``          status, device, task count, residency (``bank.stats()``), batching statistics
``GET /tasks``           every listed task: name, classes, method, file size, resident; unusable ones with why
``POST /tasks``          ``{"file": "<path under the task directory>", "name": optional}``: load a task file
``POST /tasks/refresh``  scan the task directory again: new files listed, vanished ones dropped, changed re-listed
``DELETE /tasks/{name}`` remove a task
``POST /predict/{task}`` multipart ``file``: ``{"task": ..., "top_k": [{"label", "prob"}, ...]}``
``POST /predict``        multipart ``file`` (+ ``tasks=a,b`` to choose): ``{"results": [{"task", "top_k"}, ...]}``
=======================  =====================================================================================

Errors are JSON ``{"detail": "<one line>"}``: 400 bad task file, 403 a path outside the task directory, 404
unknown task or file, 409 a task name already loaded, 413 an upload or image too large, 415 not an image, 422 a
request the task cannot take. The OpenAPI schema is at ``/openapi.json`` (docs at ``/docs``).
"""

from __future__ import annotations

import io
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from ..bank import TaskBank, top_k_labels
from ..errors import AdaptFormerError
from .batcher import Batcher
from .page import PAGE


class LoadRequest(BaseModel):
    file: str
    name: str | None = None


class Limits(BaseModel):
    max_upload_bytes: int = 16 * 2**20
    max_pixels: int = 40_000_000
    max_tasks_per_request: int = 64


def create_app(
    bank: TaskBank,
    task_dir: str | Path | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    batching: bool = True,
    limits: Limits | None = None,
) -> FastAPI:
    limits = limits or Limits()
    batcher = Batcher(bank, max_batch, max_wait_ms, batching)
    root = Path(task_dir).resolve() if task_dir else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="adaptformer", summary="many AdaptFormer tasks on one frozen backbone", lifespan=lifespan)
    app.state.bank, app.state.batcher = bank, batcher

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "tasks": len(bank.tasks),
            "device": str(bank.device),
            "bank": bank.stats(),
            "batching": batcher.stats.to_dict(),
        }

    @app.get("/tasks")
    async def tasks() -> list[dict]:
        return bank.infos()

    @app.post("/tasks/refresh")
    async def refresh_tasks() -> dict:
        if root is None:
            raise HTTPException(403, "no --task-dir was given: there is no directory to scan")
        try:
            return await batcher.on_model_thread(bank.refresh)
        except AdaptFormerError as error:
            raise HTTPException(400, str(error)) from None

    @app.post("/tasks", status_code=201)
    async def load_task(request: LoadRequest) -> dict:
        if root is None:
            raise HTTPException(403, "no --task-dir was given: the server loads no task files at run time")
        try:
            path = (root / request.file).resolve()
        except (ValueError, OSError) as error:  # a NUL byte, a name too long for the file system, ...
            raise HTTPException(400, f"file: not a usable file name ({error})") from None
        if not path.is_relative_to(root):
            raise HTTPException(403, f"{request.file}: outside the task directory")
        if not path.is_file():
            raise HTTPException(404, f"{request.file}: no such task file in the task directory")
        name = request.name or path.stem
        if bank.has(name) and Path(bank.info(name).file).resolve() != path:
            raise HTTPException(409, f"task {name!r} is already loaded from another file")
        try:
            await batcher.on_model_thread(bank.load, str(path), name)
        except AdaptFormerError as error:
            raise HTTPException(400, str(error)) from None
        return bank.info(name).to_dict()

    @app.delete("/tasks/{name}")
    async def remove_task(name: str) -> dict:
        _known(name)
        await batcher.on_model_thread(bank.remove, name)
        return {"removed": name}

    @app.post("/predict/{task}")
    async def predict_one(task: str, file: UploadFile = File(...), top_k: int = Query(5, ge=1, le=1000)) -> dict:
        _known(task)
        results = await _predict(file, [task], top_k)
        return results[0]

    @app.post("/predict")
    async def predict_many(
        file: UploadFile = File(...),
        tasks: str | None = Query(None, description="comma-separated task names (default: every task)"),
        top_k: int = Query(5, ge=1, le=1000),
    ) -> dict:
        names = [t for t in (tasks.split(",") if tasks else bank.tasks) if t]
        if len(names) > limits.max_tasks_per_request:
            raise HTTPException(422, f"at most {limits.max_tasks_per_request} tasks per request")
        for name in names:
            _known(name)
        return {"results": await _predict(file, names, top_k)}

    def _known(name: str) -> None:
        if not bank.has(name):
            raise HTTPException(404, f"task {name!r}: no such task (loaded: {', '.join(bank.tasks) or 'none'})")

    async def _predict(file: UploadFile, names: list[str], top_k: int) -> list[dict]:
        image = await _read_image(file)
        try:
            rows = bank.input_rows(image, names)
        except AdaptFormerError as error:
            raise HTTPException(422, str(error)) from None
        try:
            logits = await batcher.logits(rows, names)
        except AdaptFormerError as error:  # a task file that changed on disk or cannot be loaded
            raise HTTPException(409, str(error)) from None
        return [
            {"task": name, "top_k": top_k_labels(values, bank.info(name).classes, top_k)}
            for name, values in zip(names, logits, strict=True)
        ]

    async def _read_image(file: UploadFile) -> Image.Image:
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {limits.max_upload_bytes} bytes")
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > limits.max_pixels:  # checked on the header, before decoding
                raise HTTPException(413, f"image of {image.width}x{image.height} pixels; at most {limits.max_pixels}")
            image.load()
        except HTTPException:
            raise
        except Image.DecompressionBombError as error:  # Pillow's own limit, met while reading the header
            raise HTTPException(413, f"image too large to decode ({error})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise HTTPException(415, f"not a readable image ({type(error).__name__})") from None
        return image

    return app
