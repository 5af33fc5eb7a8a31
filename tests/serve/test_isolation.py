"""In-process checks of the app (Starlette's TestClient): one request's failure stays its own, every error is a
one-line JSON detail, a refused load leaves nothing in the model, and the settings refuse bad options."""

import asyncio
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import adaptformer
from adaptformer.bank import TaskBank
from adaptformer.cli import main
from adaptformer.errors import AdaptFormerError
from adaptformer.serve.app import create_app
from adaptformer.serve.batcher import Batcher
from adaptformer.serve.settings import ServeSettings
from adaptformer.tasks.format import read_task, write_task

MODEL = "adaptformer/vit-tiny-cifar10"


def png(seed: int = 0, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(seed: int = 0):
    return {"file": ("x.png", png(seed), "image/png")}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    good = adaptformer.create_model(MODEL, "adaptformer", num_classes=3, bottleneck=4)
    adaptformer.save_task(good, root / "good.safetensors")
    meta, tensors = read_task(root / "good.safetensors")
    broken = {
        "crop": {"crop_pct": "abc"},
        "nomean": {"mean": None},
        "size0": {"input_size": [3, 0, 0]},
        "size50": {"input_size": [3, 50, 50]},  # not a multiple of the patch size
        "std0": {"std": [0.0, 0.0, 0.0]},
        "interp": {"interpolation": "sideways"},
    }
    for name, change in broken.items():
        spoilt = {**meta, "preprocessing": {**meta["preprocessing"], **change}}
        if change.get("mean", 1) is None:
            del spoilt["preprocessing"]["mean"]
        write_task(root / "bad" / f"{name}.safetensors", spoilt, tensors)
    write_task(
        root / "bad" / "nan.safetensors",
        meta,
        {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in tensors.items()},
    )
    write_task(root / "bad" / "extra.safetensors", meta, {**tensors, "stowaway": torch.zeros(3)})
    return root


def client_for(task_dir, settings=None, tasks=("good",)):
    bank = TaskBank.open(
        [str(task_dir / f"{t}.safetensors") for t in tasks], None, MODEL, device="cpu", precision="fp32"
    )
    return bank, TestClient(
        create_app(bank, task_dir, settings or ServeSettings()),
        base_url="http://localhost",
        raise_server_exceptions=False,
    )


def test_refused_loads_leave_nothing_behind(task_dir):
    bank, client = client_for(task_dir)
    with client:
        before = dict(bank.model.tasks)
        for _ in range(5):  # many refusals: nothing accumulates
            for path in sorted((task_dir / "bad").glob("*.safetensors")):
                answer = client.post("/tasks", json={"file": f"bad/{path.name}"})
                assert answer.status_code == 400, (path.name, answer.text)
                detail = answer.json()["detail"]
                assert path.name in detail or path.stem in detail, detail  # says which file
                assert "\n" not in detail and str(task_dir) not in detail  # one line, no absolute path
        assert dict(bank.model.tasks).keys() == before.keys() and bank.tasks == ["good"]
        assert bank.stats()["resident"] <= 1
        listed = client.get("/tasks").json()
        assert [t["name"] for t in listed] == ["good"] and listed[0]["file"] == "good.safetensors"


def test_every_error_is_one_line_of_json(task_dir):
    bank, client = client_for(task_dir)
    with client:
        cases = [
            (client.post("/predict?tasks=,", files=upload()), 422),
            (client.post("/predict?tasks=good,nope", files=upload()), 404),
            (client.post("/predict/nope", files=upload()), 404),
            (client.post("/tasks", json={"file": "x" * 5000}), 422),
            (client.post("/tasks", json={"file": "good.safetensors", "name": "a/b"}), 422),
            (client.post("/tasks", json={"file": "good.safetensors", "name": "x" * 65}), 422),
            (client.post("/predict/good?top_k=0", files=upload()), 422),
            (client.post("/predict/good", files={"file": ("x.png", b"garbage", "image/png")}), 415),
            (client.delete("/tasks/nope"), 404),
            (client.get("/nowhere"), 404),
        ]
        for response, status in cases:
            assert response.status_code == status, response.text
            assert response.headers["content-type"].startswith("application/json")
            detail = response.json()["detail"]
            assert isinstance(detail, str) and detail and "\n" not in detail


def test_no_task_loaded_is_a_404_not_a_500(task_dir):
    bank = TaskBank.empty(MODEL, device="cpu", precision="fp32")
    with TestClient(create_app(bank, task_dir), base_url="http://localhost") as client:
        answer = client.post("/predict", files=upload())
        assert answer.status_code == 404 and "no task is loaded" in answer.json()["detail"]


def test_an_internal_failure_is_a_json_500_and_health_says_degraded(task_dir, monkeypatch):
    bank, client = client_for(task_dir)
    with client:
        assert client.get("/ready").status_code == 200
        real = bank.logits
        monkeypatch.setattr(bank, "logits", lambda *a: (_ for _ in ()).throw(RuntimeError("device lost")))
        answer = client.post("/predict/good", files=upload())
        assert answer.status_code == 500 and answer.json()["detail"].startswith("internal error (RuntimeError)")
        assert "device lost" not in answer.json()["detail"]  # the details stay in the server log
        assert client.get("/health").json()["status"] == "degraded" and client.get("/ready").status_code == 503
        monkeypatch.setattr(bank, "logits", real)
        assert client.post("/predict/good", files=upload()).status_code == 200
        assert client.get("/health").json()["status"] == "ok" and client.get("/ready").status_code == 200


class _PoisonBank:
    """A bank whose batch raises when it holds the poisoned task; alone, only that request fails."""

    def __init__(self):
        self.calls = []

    def has(self, name):
        return name != "removed"

    def prefetch(self, names):  # nothing to read ahead: the rows are the answers
        self.prefetched = [*getattr(self, "prefetched", []), *names]

    def logits(self, rows, tasks):
        self.calls.append(len(rows))
        if "poison" in tasks:
            raise RuntimeError("this row cannot run")
        return [row * 2 for row in rows]


def test_one_failing_request_never_fails_its_batch():
    bank = _PoisonBank()

    async def scenario():
        batcher = Batcher(bank, max_batch=64, max_wait_ms=50)
        batcher.start()
        healthy = [batcher.logits([torch.full((2,), float(i))], [f"t{i % 3}"]) for i in range(16)]
        poisoned = batcher.logits([torch.zeros(2)], ["poison"])
        removed = batcher.logits([torch.zeros(2)], ["removed"])
        results = await asyncio.gather(*healthy, poisoned, removed, return_exceptions=True)
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(scenario())
    for i, result in enumerate(results[:16]):
        assert torch.equal(result[0], torch.full((2,), 2.0 * i))
    assert isinstance(results[16], RuntimeError)
    assert isinstance(results[17], AdaptFormerError) and "removed" in str(results[17])
    assert stats.retried_batches == 1 and stats.failed_requests == 2
    assert bank.calls[0] == 17  # the batch ran once with everyone, then request by request
    assert sorted(set(bank.prefetched)) == ["poison", "removed", "t0", "t1", "t2"]  # read ahead as they queued


def test_the_batcher_hands_free_memory_back_on_the_model_thread_after_batches_even_failed_ones():
    """With the allocator tuned, free memory is handed back between batches, on the model thread (never during a
    forward), at most once per interval: here every batch, the poisoned one included."""
    import threading

    from adaptformer.runtime.allocator import PeriodicReturn

    bank, threads = _PoisonBank(), []

    async def scenario():
        batcher = Batcher(bank, max_batch=1, max_wait_ms=0)
        batcher.memory = PeriodicReturn(
            every_s=0, tuned=lambda: True, release=lambda: threads.append(threading.current_thread().name)
        )
        batcher.start()
        results = [await batcher.logits([torch.ones(2)], [task]) for task in ("t0", "t1")]
        results += await asyncio.gather(batcher.logits([torch.zeros(2)], ["poison"]), return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[-1], RuntimeError)
    assert len(threads) == 3 and all(name.startswith("adaptformer-model") for name in threads)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--port", "99999"], "--port 99999: expected 0-65535"),
        (["--max-batch", "0"], "--max-batch 0: expected a positive integer"),
        (["--max-upload-mb", "-1"], "--max-upload-mb -1.0: expected a positive number"),
        (["--max-queue", "0"], "--max-queue 0"),
        (["--host", "0.0.0.0"], "no --api-key is set"),
        (["--api-key", "short"], "--api-key: expected at least 16 characters"),
        (["--auth-everything"], "--auth-everything needs --api-key"),
        (["--ssl-keyfile", "k.pem"], "--ssl-keyfile and --ssl-certfile"),
        (["--cors-origin", "not a url"], "--cors-origin"),
        (["--replicas", "0"], "--replicas 0"),
    ],
)
def test_serve_options_are_checked_before_start_up(options, message, capsys, monkeypatch):
    monkeypatch.delenv("ADAPTFORMER_API_KEY", raising=False)
    assert main(["serve", "--model", MODEL, *options]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
