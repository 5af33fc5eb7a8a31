"""``POST /predict/{task}`` and ``POST /predict``: an upload decoded off the event loop (``decoding.py``), answered
by one task or every task of its kind, batched across requests (``batcher.py``)."""

from __future__ import annotations

import io

from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from PIL import Image, UnidentifiedImageError

from ...errors import AdaptFormerError, UnknownTask
from ...media import Clip, MediaTooLarge, UnreadableMedia, bomb_message, decode_image
from ...objectives import DEFAULT_THRESHOLD
from ..context import Server
from ..errors import COMMON, responses
from ..settings import ServeSettings

THRESHOLD_HELP = "multi-label tasks: answer every label at least this probable"


def router(server: Server) -> APIRouter:
    routes = APIRouter()
    bank, batcher, pool, settings = server.bank, server.batcher, server.pool, server.settings

    @routes.post("/predict/{task}", responses=responses(*COMMON, 404, 409, 415, 422, 503))
    async def predict_one(
        task: str,
        file: UploadFile = File(...),
        top_k: int = Query(5, ge=1, le=1000),
        threshold: float = Query(DEFAULT_THRESHOLD, ge=0.0, le=1.0, description=THRESHOLD_HELP),
    ) -> dict:
        server.known(task)
        results = await _predict(file, [task], top_k, threshold)
        return results[0]

    @routes.post("/predict", responses=responses(*COMMON, 404, 409, 415, 422, 503))
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
            server.known(name)
        return {"results": await _predict(file, names, top_k, threshold)}

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
        media = decode_upload(data, filename, settings)
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

    return routes


def decode_upload(data: bytes, filename: str, settings: ServeSettings) -> Image.Image | Clip:
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
