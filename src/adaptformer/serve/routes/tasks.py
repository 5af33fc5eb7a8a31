"""``GET /tasks`` (every listed task), ``POST /tasks`` (load a file of the task directory now), ``POST
/tasks/refresh`` (scan the directory again) and ``DELETE /tasks/{name}``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from ...bank import TASK_NAME, TASK_NAME_RULE
from ...errors import UnknownTask
from ..context import Server
from ..errors import COMMON, responses


class LoadRequest(BaseModel):
    file: str = Field(min_length=1, max_length=1024, description="path of a task file, relative to --task-dir")
    name: str | None = Field(None, pattern=f"^{TASK_NAME.pattern}$", description=TASK_NAME_RULE)


def router(server: Server) -> APIRouter:
    routes = APIRouter()
    bank, batcher, root = server.bank, server.batcher, server.root

    @routes.get("/tasks", responses=responses(401))
    async def tasks() -> list[dict]:
        return [server.public(row) for row in bank.infos()]

    @routes.post("/tasks/refresh", responses=responses(*COMMON, 403))
    async def refresh_tasks() -> dict:
        if root is None:
            raise HTTPException(403, "no --task-dir was given: there is no directory to scan")
        return await batcher.on_model_thread(bank.refresh)

    @routes.post("/tasks", status_code=201, responses=responses(*COMMON, 403, 404, 409))
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
        return server.public({**bank.info(name).to_dict(), "usable": True, "resident": True})

    @routes.delete("/tasks/{name}", responses=responses(401, 404))
    async def remove_task(name: str) -> dict:
        server.known(name)
        try:
            from_directory = await batcher.on_model_thread(bank.remove, name)
        except UnknownTask:  # removed by a concurrent DELETE
            raise HTTPException(404, f"task {name[:80]!r}: no such task") from None
        if from_directory:  # its file stays: say when it comes back
            return {"removed": name, "note": "its file stays in the task directory: listed again once it changes"}
        return {"removed": name}

    return routes
