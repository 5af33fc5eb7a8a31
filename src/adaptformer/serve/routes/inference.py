"""The Open Inference Protocol (KServe v2) beside the server's own API, so the clients platforms use (Triton's
client, KServe, Seldon) can call every task: each task is a model.

=====================================  ==========================================================================
``GET /v2``                            server metadata: name, version, extensions
``GET /v2/health/live``                200 while the process answers
``GET /v2/health/ready``               200 once the model thread runs and is not failing, 503 otherwise
``GET /v2/models/{task}``              the task's inputs and outputs (names, datatypes, shapes) and its classes
``GET /v2/models/{task}/ready``        200 for a usable task, 404 otherwise
``POST /v2/models/{task}/infer``       ``image`` (``BYTES``: encoded images or clips, one per element) or
                                       ``pixel_values`` (``FP32``, preprocessed as ``GET /v2/models/{task}``
                                       says); answers ``probabilities`` (``FP32``) and ``labels`` (``BYTES``, the
                                       top-k class names, most probable first; ``parameters.top_k``, default 5)
=====================================  ==========================================================================

Requests join the same cross-task batches as ``/predict`` (``batcher.py``) and pass the same admission (body
size, API key, Host, Origin), decoding limits and error rules (errors carry ``error`` as the protocol's clients
read it, and ``detail``). Wire formats: ``inference_protocol.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from ...errors import AdaptFormerError, UnknownTask
from ...media import MediaTooLarge, UnreadableMedia
from ...objectives import get_objective
from ...utils.options import is_int
from ...version import __version__
from ..context import Server
from ..errors import COMMON, responses
from ..inference_protocol import (
    HEADER_LENGTH,
    InferRequest,
    Output,
    ProtocolError,
    Tensor,
    read_infer_request,
    write_infer_response,
)
from .predict import decode_upload

IMAGE_INPUT, PIXEL_INPUT = "image", "pixel_values"
OUTPUTS = ("probabilities", "labels")
DEFAULT_TOP_K = 5


def router(server: Server) -> APIRouter:
    routes = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe v2)"])
    bank, batcher, pool, settings = server.bank, server.batcher, server.pool, server.settings

    @routes.get("")
    async def server_metadata() -> dict:
        return {"name": "adaptformer", "version": __version__, "extensions": ["binary_tensor_data"]}

    @routes.get("/health/live")
    async def live() -> dict:
        return {"live": True}

    @routes.get("/health/ready", responses=responses(503))
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": batcher.ready}, status_code=200 if batcher.ready else 503)

    @routes.get("/models/{task}", responses=responses(401, 404))
    async def model_metadata(task: str) -> dict:
        server.known(task)
        return metadata(task)

    @routes.get("/models/{task}/ready", responses=responses(401, 404))
    async def model_ready(task: str) -> dict:
        server.known(task)
        return {"name": task, "ready": True}

    @routes.post("/models/{task}/infer", responses=responses(*COMMON, 404, 415, 422, 503))
    async def infer(task: str, request: Request) -> Response:
        server.known(task)
        with pool.admit():
            body = await request.body()  # bounded by admission (--max-upload-mb)
            try:
                parsed = read_infer_request(body, request.headers.get(HEADER_LENGTH))
            except ProtocolError as error:
                raise HTTPException(400, str(error)) from None
            tensor = _the_input(parsed)
            wanted, top_k = _wanted_outputs(parsed), _top_k(parsed, len(bank.info(task).classes))  # before any work
            rows = await pool.run(_rows, task, tensor)
            logits = await batcher.logits(rows, [task] * len(rows)) if rows else []
        content, headers = write_infer_response(task, parsed, _outputs(task, wanted, top_k, logits))
        return Response(content, headers=headers)

    def metadata(task: str) -> dict:
        info = bank.info(task)
        shape = info.spec.sample_shape
        return {
            "name": task,
            "versions": ["1"],
            "platform": "adaptformer",
            "inputs": [
                {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                {"name": PIXEL_INPUT, "datatype": "FP32", "shape": [-1, *shape]},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(info.classes)]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
            ],
            "parameters": {
                "classes": info.classes,
                "objective": info.objective,
                "method": info.method,
                "modality": info.spec.modality,
                "preprocessing": info.spec.to_dict(),
                "input": f"one of {IMAGE_INPUT} (encoded {'clips' if info.spec.frames > 1 else 'images'}) or "
                f"{PIXEL_INPUT} (preprocessed)",
            },
        }

    def _rows(task: str, tensor: Tensor) -> list[torch.Tensor]:
        """On a decoding thread: each element of the input as the task's input tensor."""
        spec = bank.info(task).spec
        if tensor.name == PIXEL_INPUT:
            expected = spec.sample_shape
            if tensor.shape[1:] != expected:
                raise HTTPException(
                    422, f"input {PIXEL_INPUT!r}: shape {tensor.shape}; task {task!r} takes [batch, "
                    f"{', '.join(map(str, expected))}] (GET /v2/models/{task})",
                )  # fmt: skip
            pixels = torch.from_numpy(np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape))
            if not torch.isfinite(pixels).all():
                raise HTTPException(422, f"input {PIXEL_INPUT!r}: holds NaN or infinite values")
            return list(pixels)
        rows = []
        for index, data in enumerate(tensor.data):
            if len(data) > settings.max_upload_bytes:
                raise HTTPException(413, f"input {IMAGE_INPUT!r}[{index}]: larger than --max-upload-mb")
            try:
                rows += bank.input_rows(decode_upload(bytes(data), f"element {index}", settings), [task])
            except (MediaTooLarge, UnreadableMedia) as error:
                raise type(error)(f"input {IMAGE_INPUT!r}[{index}]: {error}") from None
            except UnknownTask:
                raise
            except AdaptFormerError as error:  # an image for a video task, or the reverse
                raise HTTPException(422, f"input {IMAGE_INPUT!r}[{index}]: {error}") from None
        return rows

    def _outputs(task: str, wanted: list[str], top_k: int, logits: list[torch.Tensor]) -> list[Output]:
        info = bank.info(task)
        stacked = torch.stack(logits).float() if logits else torch.zeros(0, len(info.classes))
        probabilities = get_objective(info.objective).probabilities(stacked)
        results = {
            "probabilities": Output("probabilities", "FP32", list(probabilities.shape), probabilities.numpy()),
            "labels": Output(
                "labels", "BYTES", [len(stacked), top_k],
                [info.classes[i] for row in probabilities.topk(top_k, dim=-1).indices.tolist() for i in row],
            ),
        }  # fmt: skip
        return [results[name] for name in wanted]

    return routes


def _the_input(request: InferRequest) -> Tensor:
    if len(request.inputs) != 1 or request.inputs[0].name not in (IMAGE_INPUT, PIXEL_INPUT):
        names = ", ".join(repr(t.name[:64]) for t in request.inputs)
        raise HTTPException(
            400, f"inputs {names}: expected one input, {IMAGE_INPUT!r} (BYTES) or {PIXEL_INPUT!r} (FP32)"
        )
    tensor = request.inputs[0]
    wanted = "BYTES" if tensor.name == IMAGE_INPUT else "FP32"
    if tensor.datatype != wanted:
        raise HTTPException(400, f"input {tensor.name!r}: datatype {tensor.datatype}; expected {wanted}")
    if tensor.name == IMAGE_INPUT and len(tensor.shape) != 1:
        raise HTTPException(400, f"input {IMAGE_INPUT!r}: shape {tensor.shape}; expected [batch]")
    return tensor


def _wanted_outputs(request: InferRequest) -> list[str]:
    wanted = [o.get("name") for o in request.outputs] if request.outputs else list(OUTPUTS)
    unknown = [str(name)[:64] for name in wanted if name not in OUTPUTS]
    if unknown:
        raise HTTPException(400, f"outputs: {', '.join(map(repr, unknown))}: expected {' or '.join(OUTPUTS)}")
    return wanted


def _top_k(request: InferRequest, classes: int) -> int:
    value = request.parameters.get("top_k", DEFAULT_TOP_K)
    if not is_int(value, 1):
        raise HTTPException(400, f"parameters.top_k {str(value)[:20]!r}: expected a positive integer")
    return min(value, classes)
