"""The real server (uvicorn on 127.0.0.1, a subprocess): concurrent mixed-task requests, limits, task management.

Requests are bounded in number and time; the server is stopped at the end."""

import io
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from launch import start_server, stop_server
from PIL import Image

from adaptformer.bank import TaskBank
from adaptformer.train.loop import fit
from training_helpers import tiny_train_config


def png(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    task_dir = root / "tasks"
    task_dir.mkdir()
    for name, options in {
        "colour": dict(method="adaptformer", bottleneck=8),
        "probe": dict(method="linear", seed=1),
        "prompted": dict(method="vpt", vpt_tokens=2, seed=2),
    }.items():
        fit(tiny_train_config(root, epochs=1, out=str(root / name), lr=0.1, augment=False, **options))
        shutil.copy(
            root / name / "last.safetensors", (task_dir if name != "prompted" else root) / f"{name}.safetensors"
        )
    process, url = start_server(
        [
            "--task",
            str(task_dir / "colour.safetensors"),
            "--task",
            str(task_dir / "probe.safetensors"),
            "--task-dir",
            str(task_dir),
            "--checkpoint",
            str(root / "tiny_vit.safetensors"),
            "--precision",
            "fp32",
            "--max-wait-ms",
            "100",
            "--max-upload-mb",
            "0.05",
            "--max-pixels",
            "100000",
        ]
    )
    bank = TaskBank.from_files(
        [str(task_dir / "colour.safetensors"), str(task_dir / "probe.safetensors")],
        checkpoint=str(root / "tiny_vit.safetensors"),
        device="cpu",
        precision="fp32",
    )
    yield url, bank, task_dir
    stop_server(process)


def expected(bank, seed, task):
    image = Image.open(io.BytesIO(png(seed)))
    return bank.predict_images([image], tasks=[task], top_k=3)[0]["top_k"]


def assert_same(answer, reference):
    assert [t["label"] for t in answer] == [t["label"] for t in reference]
    assert all(abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(answer, reference, strict=True))


def test_concurrent_mixed_task_requests_equal_direct_predictions(server):
    url, bank, _ = server
    jobs = [(seed, ["colour", "probe"][seed % 2]) for seed in range(16)]

    def call(job):
        seed, task = job
        response = httpx.post(
            f"{url}/predict/{task}?top_k=3", files={"file": ("x.png", png(seed), "image/png")}, timeout=30
        )
        return job, response

    with ThreadPoolExecutor(8) as pool:
        for (seed, task), response in pool.map(call, jobs):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["task"] == task
            assert_same(body["top_k"], expected(bank, seed, task))
    stats = httpx.get(f"{url}/health", timeout=5).json()["batching"]
    assert (
        stats["rows"] >= 16 and stats["largest"] > 1 and stats["mixed_batches"] >= 1
    )  # requests were batched across tasks


def test_predict_every_task_and_some(server):
    url, bank, _ = server
    body = httpx.post(f"{url}/predict?top_k=3", files={"file": ("x.png", png(99), "image/png")}, timeout=30).json()
    assert [r["task"] for r in body["results"]] == ["colour", "probe"]
    for result in body["results"]:
        assert_same(result["top_k"], expected(bank, 99, result["task"]))
    some = httpx.post(f"{url}/predict?tasks=probe", files={"file": ("x.png", png(99), "image/png")}, timeout=30).json()
    assert [r["task"] for r in some["results"]] == ["probe"]


def test_bad_requests_get_4xx_with_a_message(server):
    url, _, _ = server

    def post(path, data):
        return httpx.post(f"{url}{path}", files={"file": ("x", data, "application/octet-stream")}, timeout=30)

    assert post("/predict/nope", png(1)).status_code == 404
    response = post("/predict/colour", b"certainly not an image")
    assert response.status_code == 415 and "not a readable image" in response.json()["detail"]
    assert post("/predict/colour", b"\0" * 60_000).status_code == 413  # over --max-upload-mb 0.05
    bomb = io.BytesIO()
    Image.new("L", (400, 400)).save(bomb, format="PNG")  # small file, 160,000 pixels > --max-pixels
    response = post("/predict/colour", bomb.getvalue())
    assert response.status_code == 413 and "pixels" in response.json()["detail"]
    huge = io.BytesIO()
    Image.new("1", (30000, 30000)).save(huge, format="PNG")  # a few hundred kB claiming 900 M pixels
    response = post("/predict/colour", huge.getvalue()[:40_000])  # cut to fit the upload cap; the header stays
    assert response.status_code == 413  # Pillow's own bomb refusal, said with this server's limit
    assert response.json()["detail"] == "image of 900000000 pixels; at most 100000"
    assert httpx.post(f"{url}/predict", timeout=10).status_code == 422  # no file


def test_task_management(server):
    url, _, task_dir = server
    assert [t["name"] for t in httpx.get(f"{url}/tasks", timeout=5).json()] == ["colour", "probe"]
    shutil.copy(task_dir.parent / "prompted.safetensors", task_dir / "prompted.safetensors")
    refreshed = httpx.post(f"{url}/tasks/refresh", timeout=30).json()
    assert refreshed == {"added": ["prompted"], "removed": [], "changed": []}
    listed = httpx.get(f"{url}/tasks", timeout=5).json()
    assert [t["name"] for t in listed] == ["colour", "probe", "prompted"]
    assert listed[2]["resident"] is False  # listed from its header, not loaded
    assert httpx.post(f"{url}/tasks", json={"file": "../tasks/../../etc/passwd"}, timeout=10).status_code == 403
    assert httpx.post(f"{url}/tasks", json={"file": "missing.safetensors"}, timeout=10).status_code == 404
    clash = httpx.post(f"{url}/tasks", json={"file": "prompted.safetensors", "name": "probe"}, timeout=10)
    assert clash.status_code == 409
    answer = httpx.post(f"{url}/predict/prompted", files={"file": ("x.png", png(3), "image/png")}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["top_k"]) == 3  # loaded on first use
    shutil.copy(task_dir / "prompted.safetensors", task_dir / "again.safetensors")
    loaded = httpx.post(f"{url}/tasks", json={"file": "again.safetensors"}, timeout=30)
    assert loaded.status_code == 201 and loaded.json()["method"] == "vpt"
    health = httpx.get(f"{url}/health", timeout=5).json()["bank"]
    assert health["listed"] == 4 and health["resident"] >= 3 and health["loads"] >= 3
    assert {"evictions", "hit_rate", "resident_mb"} <= set(health)
    assert httpx.delete(f"{url}/tasks/again", timeout=10).json() == {"removed": "again"}
    assert httpx.delete(f"{url}/tasks/again", timeout=10).status_code == 404


def test_schema_lists_the_error_codes_and_the_docs_work_offline(server):
    url, _, _ = server
    schema = httpx.get(f"{url}/openapi.json", timeout=5).json()
    assert {"/health", "/ready", "/tasks", "/predict", "/predict/{task}", "/tasks/{name}"} <= set(schema["paths"])
    codes = set(schema["paths"]["/predict/{task}"]["post"]["responses"])
    assert {"404", "413", "415", "422", "503"} <= codes
    for docs in ("/docs", "/redoc"):
        html = httpx.get(f"{url}{docs}", timeout=5).text
        assets = [part.split('"')[0] for part in html.split("/assets/docs/")[1:]]
        assert assets and "cdn." not in html  # nothing from a CDN
        for asset in assets:
            assert httpx.get(f"{url}/assets/docs/{asset}", timeout=5).status_code == 200, asset
