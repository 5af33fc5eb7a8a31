"""``GET /`` (the page), ``/health``, ``/ready`` (for orchestrators) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..context import Server
from ..errors import responses
from ..page import PAGE


def router(server: Server) -> APIRouter:
    routes = APIRouter()
    bank, batcher, pool = server.bank, server.batcher, server.pool

    @routes.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE

    @routes.get("/health", responses=responses(401))
    async def health() -> dict:
        stats = batcher.stats
        return {
            "status": "ok" if batcher.ready else "degraded",
            "tasks": len(bank.tasks),
            "device": str(bank.device),
            "precision": bank.precision,
            "quantized": bank.model.quantized,  # "int8" with --quantize int8, else null
            "task_precision": bank.task_precision,  # how resident tasks are held: auto, fp32 or int8
            "bank": bank.stats(),
            "batching": stats.to_dict(),
            "admission": {"in_progress": pool.admitted, "max_queue": pool.max_queue, "refused": pool.refused},
        }

    @routes.get("/ready", responses=responses(503))
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": batcher.ready}, status_code=200 if batcher.ready else 503)

    @routes.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return routes
