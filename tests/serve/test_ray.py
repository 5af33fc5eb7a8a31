"""Scale-out on Ray Serve: a local Ray instance, 2 replicas of the app over one task directory, concurrent
mixed-task requests answered as the library predicts them."""

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from launch import free_port
from PIL import Image

import adaptformer
from adaptformer.bank import TaskBank
from adaptformer.serve.settings import ServeSettings

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'adaptformer[ray]')")


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ray_served(tmp_path_factory):
    from ray import serve

    from adaptformer.serve.ray_serve import start

    root = tmp_path_factory.mktemp("ray")
    for seed, name in enumerate(("left", "right", "third")):
        torch.manual_seed(seed)
        model = adaptformer.create_model("adaptformer/vit-tiny-cifar10", "adaptformer", num_classes=4)
        adaptformer.save_task(model, root / "tasks" / f"{name}.safetensors")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="adaptformer-test")
    except Exception as error:  # a machine where Ray cannot start its processes
        pytest.skip(f"Ray cannot start here: {type(error).__name__}: {error}")
    port = free_port()
    options = {"tasks": [], "task_dir": str(root / "tasks"), "device": "cpu", "precision": "fp32", "max_resident": 2}
    start(options, ServeSettings(port=port, max_wait_ms=20), replicas=2, cpus_per_replica=0.5)
    yield f"http://127.0.0.1:{port}", root
    serve.shutdown()
    ray.shutdown()


def test_two_replicas_answer_mixed_task_requests_as_predict_does(ray_served):
    from ray import serve

    url, root = ray_served
    bank = TaskBank.open([], str(root / "tasks"), device="cpu", precision="fp32")
    jobs = [(seed, ["left", "right", "third"][seed % 3]) for seed in range(24)]

    def call(job):
        seed, task = job
        return job, httpx.post(f"{url}/predict/{task}?top_k=4", files={"file": ("x.png", png(seed))}, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, jobs))
    for (seed, task), response in answers:
        assert response.status_code == 200, response.text
        want = bank.predict_images([Image.open(io.BytesIO(png(seed)))], [task], top_k=4)[0]["top_k"]
        got = response.json()["top_k"]
        assert [t["label"] for t in got] == [t["label"] for t in want]
        assert all(abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(got, want, strict=True))
    replicas = serve.status().applications["adaptformer"].deployments["adaptformer"].replica_states
    assert replicas.get("RUNNING") == 2
    assert httpx.get(f"{url}/tasks", timeout=30).status_code == 200
    refused = httpx.post(f"{url}/predict/nope", files={"file": ("x.png", png(0))}, timeout=30)
    assert refused.status_code == 404 and "no such task" in refused.json()["detail"]
