"""Schemathesis against the served OpenAPI schema of a real ``adaptformer serve`` process: over 1,000 generated
requests (valid and invalid paths, queries, bodies and uploads), none answered with a 5xx, and the server is
still up and answering correctly at the end."""

import io

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from launch import start_server, stop_server
from PIL import Image

import adaptformer

EXAMPLES_PER_OPERATION = 320  # GET /health and /tasks have few distinct requests; the rest fill 1,000+


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "tasks").mkdir()
    for name, method, options in (("digits", "adaptformer", {"bottleneck": 4}), ("probe", "linear", {})):
        model = adaptformer.create_model("adaptformer/vit-tiny-cifar10", method, num_classes=3, **options)
        adaptformer.save_task(model, root / "tasks" / f"{name}.safetensors")
    process, url = start_server(
        [
            "--task",
            str(root / "tasks" / "digits.safetensors"),
            "--task",
            str(root / "tasks" / "probe.safetensors"),
            "--task-dir",
            str(root / "tasks"),
            "--precision",
            "fp32",
            "--max-upload-mb",
            "1",
        ]
    )
    yield process, url
    stop_server(process)


def test_no_generated_request_gets_a_server_error(served):
    process, url = served
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    sent = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same requests every run
            database=None,
        )
        def call(case):
            response = case.call(timeout=30)
            sent.append((case.method, response.status_code))
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])

        call()
        assert process.poll() is None, f"the server died during {operation.label}"
    assert len(sent) >= 1000
    assert {method for method, _ in sent} == {"GET", "POST", "DELETE"}


def test_the_server_is_still_up_and_correct_after_the_fuzzing(served):
    process, url = served
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    answer = httpx.post(f"{url}/predict", files={"file": ("x.png", buffer.getvalue())}, timeout=30)
    assert answer.status_code == 200 and process.poll() is None
    assert {r["task"] for r in answer.json()["results"]} <= {"digits", "probe"}
