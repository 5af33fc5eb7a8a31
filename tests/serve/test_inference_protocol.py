"""The Open Inference Protocol (KServe v2) against the real server (a subprocess on 127.0.0.1): Triton's own HTTP
client (``tritonclient[http]``) with the binary tensor data extension, and plain JSON as in the protocol's
documentation; answers equal ``POST /predict/{task}``; the same key, limits and one-line errors."""

import base64
import concurrent.futures
import io

import httpx
import numpy as np
import pytest
import torch
from launch import start_server, stop_server
from PIL import Image

import adaptformer
from adaptformer.data.transforms import InputSpec
from adaptformer.media import image_tensor
from conftest import perturb_task

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "adaptformer/vit-tiny-cifar10"
KEY = "a-key-of-twenty-characters"
AUTH = {"Authorization": f"Bearer {KEY}"}


def auth() -> dict:
    """The key's header, a fresh dict per call: tritonclient adds its own headers to the dict it is given."""
    return dict(AUTH)


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tasks = tmp_path_factory.mktemp("v2") / "tasks"
    kinds = {"digits": ("adaptformer", list("wxyz"), "classification"), "tags": ("lora", list("abcde"), "multilabel")}
    for seed, (name, (method, classes, objective)) in enumerate(kinds.items()):
        torch.manual_seed(seed)
        model = adaptformer.create_model(MODEL, method, classes=classes, objective=objective)
        perturb_task(model, 0.1, seed=seed)  # off the zero initialisation: the task changes the features
        adaptformer.save_task(model, tasks / f"{name}.safetensors")
    arguments = ["--task-dir", str(tasks), "--precision", "fp32", "--api-key", KEY, "--auth-everything"]
    process, url = start_server([*arguments, "--max-wait-ms", "5"])
    yield url
    stop_server(process)


@pytest.fixture
def client(server):
    return tritonclient_http.InferenceServerClient(url=server.removeprefix("http://"))


def predict(url: str, task: str, data: bytes) -> dict:
    response = httpx.post(f"{url}/predict/{task}?top_k=3", files={"file": ("x.png", data)}, headers=auth(), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_triton_client_discovers_the_task_and_infers_as_predict(server, client):
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    assert client.is_model_ready("digits", headers=auth())
    metadata = client.get_model_metadata("digits", headers=auth())
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("image", "BYTES", [-1]),
        ("pixel_values", "FP32", [-1, 3, 32, 32]),
    ]
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [("probabilities", "FP32"), ("labels", "BYTES")]
    classes = metadata["parameters"]["classes"]
    assert len(classes) == 4 and metadata["outputs"][0]["shape"] == [-1, 4]
    images = [png(seed) for seed in range(3)]
    image = tritonclient_http.InferInput("image", [3], "BYTES")
    image.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    wanted = [tritonclient_http.InferRequestedOutput(n, binary_data=True) for n in ("probabilities", "labels")]
    result = client.infer("digits", [image], outputs=wanted, parameters={"top_k": 3}, headers=auth())
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("labels")
    assert probabilities.shape == (3, 4) and labels.shape == (3, 3)
    for row, data in enumerate(images):
        answer = predict(server, "digits", data)
        assert [a["label"] for a in answer["top_k"]] == [label.decode() for label in labels[row]]
        for a in answer["top_k"]:
            assert abs(probabilities[row, classes.index(a["label"])] - a["prob"]) <= 1e-4

    # the preprocessed tensor (as the metadata's preprocessing says) gives the same probabilities
    spec = InputSpec.from_dict(metadata["parameters"]["preprocessing"])
    pixels = np.stack([image_tensor(Image.open(io.BytesIO(d)).convert("RGB"), spec).numpy() for d in images])
    tensor = tritonclient_http.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    again = client.infer("digits", [tensor], headers=auth())  # no outputs named: every output, in binary
    assert np.abs(again.as_numpy("probabilities") - probabilities).max() <= 1e-4


def test_plain_json_as_in_the_protocol_documentation(server):
    metadata = httpx.get(f"{server}/v2/models/tags", headers=auth(), timeout=10).json()
    spec = InputSpec.from_dict(metadata["parameters"]["preprocessing"])
    pixels = image_tensor(Image.open(io.BytesIO(png(7))).convert("RGB"), spec)
    body = {
        "id": "42",
        "inputs": [{"name": "pixel_values", "shape": [1, *pixels.shape], "datatype": "FP32", "data": pixels.tolist()}],
        "parameters": {"top_k": 2},
    }
    response = httpx.post(f"{server}/v2/models/tags/infer", json=body, headers=auth(), timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["model_name"] == "tags" and answer["id"] == "42"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [1, 5] and outputs["labels"]["shape"] == [1, 2]
    probabilities = np.array(outputs["probabilities"]["data"])
    assert ((probabilities > 0) & (probabilities < 1)).all() and abs(probabilities.sum() - 1) > 1e-3  # sigmoids
    reference = predict(server, "tags", png(7))
    assert outputs["labels"]["data"] == [a["label"] for a in reference["top_k"][:2]]
    encoded = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png(7)).decode()]}
    from_bytes = httpx.post(f"{server}/v2/models/tags/infer", json={"inputs": [encoded]}, headers=auth(), timeout=30)
    assert np.abs(np.array({o["name"]: o for o in from_bytes.json()["outputs"]}["probabilities"]["data"])
                  - probabilities).max() <= 1e-4  # fmt: skip


def test_errors_are_one_line_the_client_reads_and_do_not_spill_onto_other_requests(server, client):
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nope", headers=auth())
    assert unknown.value.status() == "404" and "no such task" in unknown.value.message()
    with pytest.raises(InferenceServerException) as unauthorised:
        client.get_model_metadata("digits")
    assert unauthorised.value.status() == "401" and "API key" in unauthorised.value.message()
    wrong = tritonclient_http.InferInput("pixel_values", [1, 3, 8, 8], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32), binary_data=True)
    with pytest.raises(InferenceServerException) as shape:
        client.infer("digits", [wrong], headers=auth())
    assert shape.value.status() == "422" and "takes [batch, 3, 32, 32]" in shape.value.message()

    def infer(payload: bytes):
        image = tritonclient_http.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([payload], dtype=np.object_), binary_data=True)
        local = tritonclient_http.InferenceServerClient(url=server.removeprefix("http://"))
        try:
            return local.infer("digits", [image], headers=auth()).as_numpy("probabilities")
        except InferenceServerException as error:
            return error

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(infer, [b"not an image", png(1), b"\x89PNG broken", png(2)]))
    for bad in (results[0], results[2]):
        assert isinstance(bad, InferenceServerException) and bad.status() == "415"
        assert "input 'image'[0]: not a readable image or video" in bad.message()
    assert all(isinstance(r, np.ndarray) and r.shape == (1, 4) for r in (results[1], results[3]))

    two_elements = (
        b'{"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}'
    )
    bad_requests = [
        (b"{not json", {}, "not JSON"),
        (b'{"inputs": []}', {}, 'non-empty "inputs"'),
        (b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}', {}, "not base64"),
        (two_elements + b"\x00\x00\x00\x00", {"Inference-Header-Content-Length": str(len(two_elements))},
         "1 BYTES elements for a shape of 2"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', {}, "expected one input"),
        (b'{"inputs": [{"name": "image", "shape": "1", "datatype": "BYTES", "data": []}]}', {}, '"shape"'),
    ]  # fmt: skip
    for body, headers, expected in bad_requests:
        response = httpx.post(
            f"{server}/v2/models/digits/infer", content=body, headers={**auth(), **headers}, timeout=10
        )
        assert response.status_code == 400, (body, response.text)
        error = response.json()
        assert expected in error["error"] and error["error"] == error["detail"] and "\n" not in error["error"]
    batches = httpx.get(f"{server}/health", headers=auth(), timeout=10).json()["batching"]["batches"]
    image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png(3)).decode()]}
    for extra, expected in (({"outputs": [{"name": "logits"}]}, "'logits': expected probabilities or labels"),
                            ({"parameters": {"top_k": 0}}, "parameters.top_k '0'")):  # fmt: skip
        response = httpx.post(
            f"{server}/v2/models/digits/infer", json={"inputs": [image], **extra}, headers=auth(), timeout=10
        )
        assert response.status_code == 400 and expected in response.json()["error"], response.text
    health = httpx.get(f"{server}/health", headers=auth(), timeout=10).json()
    assert health["status"] == "ok"
    assert health["batching"]["batches"] == batches  # refused before the model ran
