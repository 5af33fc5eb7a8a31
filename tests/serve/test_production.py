"""The real server (uvicorn on 127.0.0.1, a subprocess) as a user and a hostile client meet it: requests that fail
next to ones that must not, limits that hold while the body streams, slow clients, the API key, Host and CORS
checks, decoding off the event loop, the access log and the Prometheus metrics."""

import io
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from launch import server_log, start_server, stop_server
from PIL import Image

import adaptformer
from adaptformer.bank import TaskBank

MODEL = "adaptformer/vit-tiny-cifar10"
KEY = "k" * 8 + "-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def png(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def big_png16() -> bytes:
    """A 16-bit greyscale gradient of 12 megapixels: a small file that takes real time to decode."""
    ramp = np.add.outer(np.arange(3000), np.arange(4000)).astype(np.uint16) * 5
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("production")
    tasks = root / "tasks"
    for seed, name in enumerate(("colour", "probe", "spare")):
        torch.manual_seed(seed)
        model = adaptformer.create_model(MODEL, "adaptformer" if seed != 1 else "linear", num_classes=4)
        adaptformer.save_task(model, tasks / f"{name}.safetensors")
    arguments = [
        "--task-dir",
        str(tasks),
        "--precision",
        "fp32",
        "--api-key",
        KEY,
        "--cors-origin",
        "http://allowed.example",
        "--max-upload-mb",
        "2",
        "--max-json-kb",
        "4",
        "--header-timeout",
        "1.5",
        "--max-connections",
        "48",
        "--decode-workers",
        "1",
        "--max-queue",
        "20",
        "--max-wait-ms",
        "30",
    ]
    process, url = start_server(arguments)
    bank = TaskBank.open([], str(tasks), device="cpu", precision="fp32")
    yield process, url, bank, tasks
    stop_server(process)


def predict(url, task, data, **kwargs):
    return httpx.post(
        f"{url}/predict/{task}?top_k=4", files={"file": ("x.png", data, "image/png")}, timeout=60, **kwargs
    )


def expected(bank, seed, task):
    return bank.predict_images([Image.open(io.BytesIO(png(seed)))], [task], top_k=4)[0]["top_k"]


def same(answer, reference):
    return [t["label"] for t in answer] == [t["label"] for t in reference] and all(
        abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(answer, reference, strict=True)
    )


def test_hostile_requests_mixed_in_never_fail_the_healthy_ones(server):
    _, url, bank, _ = server
    healthy = [("ok", seed, ["colour", "probe"][seed % 2]) for seed in range(16)]
    hostile = [("bad", 0, "colour"), ("unknown", 0, "nope"), ("bomb", 0, "colour"), ("bad", 1, "probe")]
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, format="PNG")

    def call(job):
        kind, seed, task = job
        data = {
            "ok": png(seed),
            "bad": b"\x89PNG\r\n\x1a\n" + b"x" * 100,
            "unknown": png(0),
            "bomb": bomb.getvalue()[:60_000],
        }[kind]
        return job, predict(url, task, data)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(call, hostile[:2] + healthy[:8] + hostile[2:] + healthy[8:]))
    for (kind, seed, task), response in answers:
        assert response.headers["content-type"].startswith("application/json")
        if kind == "ok":
            assert response.status_code == 200, response.text
            assert same(response.json()["top_k"], expected(bank, seed, task))
        else:
            assert response.status_code == {"bad": 415, "unknown": 404, "bomb": 413}[kind], response.text


def test_removing_a_task_fails_only_its_own_requests(server):
    _, url, _, _ = server
    assert (
        httpx.post(
            f"{url}/tasks", json={"file": "spare.safetensors", "name": "doomed"}, headers=AUTH, timeout=30
        ).status_code
        == 201
    )
    jobs = [("doomed" if i % 3 == 0 else "colour", i) for i in range(30)]

    def call(job):
        task, seed = job
        return job, predict(url, task, png(seed))

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(call, job) for job in jobs[:15]]
        deleted = pool.submit(lambda: httpx.delete(f"{url}/tasks/doomed", headers=AUTH, timeout=30))
        futures += [pool.submit(call, job) for job in jobs[15:]]
        answers = [f.result() for f in futures]
    assert deleted.result().status_code == 200
    for (task, _), response in answers:
        if task == "colour":
            assert response.status_code == 200, response.text
        else:
            assert response.status_code in (200, 404) and "detail" in response.json() or response.status_code == 200


def raw(url: str, request: bytes, body_chunks=(), pause: float = 0.0) -> tuple[bytes, int]:
    """Send ``request`` then the body chunks on a bare socket; the reply and the body bytes that went out."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
                sent += len(chunk)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while data := s.recv(65536):
                reply += data
        except (ConnectionResetError, TimeoutError):
            pass
    return reply, sent


def test_an_upload_over_the_limit_is_cut_off_while_it_streams(server):
    _, url, _, _ = server
    head = (
        b"POST /predict/colour HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
    chunk = b"%x\r\n%s\r\n" % (len(part) + 2**20, part + b"\0" * 2**20)
    reply, sent = raw(url, head, (chunk for _ in range(200)))  # 200 MB offered
    assert b" 413 " in reply.split(b"\r\n")[0] and b'"detail"' in reply
    assert sent < 40 * 2**20  # cut off near the 2 MB limit (plus what the socket buffers took)
    declared, _ = raw(
        url,
        b"POST /predict/colour HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 209715200\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n",
    )
    assert b" 413 " in declared.split(b"\r\n")[0]  # refused on the header, before any body
    big_json = httpx.post(f"{url}/tasks", json={"file": "a" * 10_000}, headers=AUTH, timeout=10)
    assert big_json.status_code == 413 and "at most 4096" in big_json.json()["detail"]


def test_a_client_that_sends_its_headers_slowly_is_dropped(server):
    _, url, _, _ = server
    start = time.monotonic()
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    reply, _ = raw(url, b"", (bytes([b]) for b in request * 20), pause=0.1)  # one byte per 0.1 s: 8 s
    assert reply == b"" and time.monotonic() - start < 6  # closed after the 1.5 s header timeout


def test_the_api_key_the_host_header_and_cors(server):
    _, url, _, _ = server
    for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"Authorization": KEY}):
        refused = httpx.post(f"{url}/tasks/refresh", headers=headers, timeout=10)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert httpx.delete(f"{url}/tasks/colour", timeout=10).status_code == 401
    assert httpx.post(f"{url}/tasks/refresh", headers=AUTH, timeout=10).status_code == 200
    assert httpx.get(f"{url}/tasks", timeout=10).status_code == 200  # reads need no key by default
    rebinding = httpx.get(f"{url}/tasks", headers={"Host": "attacker.example"}, timeout=10)
    assert rebinding.status_code == 400 and "not an allowed host" in rebinding.json()["detail"]
    allowed = httpx.get(f"{url}/health", headers={"Origin": "http://allowed.example"}, timeout=10)
    assert allowed.headers["access-control-allow-origin"] == "http://allowed.example"
    other = httpx.get(f"{url}/health", headers={"Origin": "http://evil.example"}, timeout=10)
    assert "access-control-allow-origin" not in other.headers
    listed = httpx.get(f"{url}/tasks", timeout=10).json()
    assert all(not row["file"].startswith("/") for row in listed)


def test_decoding_stays_off_the_event_loop_and_a_full_queue_answers_503(server):
    _, url, _, _ = server
    data = big_png16()
    assert len(data) < 2 * 2**20
    latencies = []

    def poll():
        for _ in range(10):
            start = time.monotonic()
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)

    with ThreadPoolExecutor(33) as pool:
        uploads = [pool.submit(predict, url, "colour", data) for _ in range(32)]
        time.sleep(1.0)  # the uploads are in: what follows competes with their decoding only
        poll()
        answers = [u.result() for u in uploads]
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    busy = next(a for a in answers if a.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
    assert max(latencies) < 0.5, latencies  # /health is answered while uploads decode on the pool


def test_metrics_and_the_access_log(server):
    process, url, _, _ = server
    assert predict(url, "colour", png(5)).status_code == 200
    assert httpx.post(f"{url}/tasks/refresh", timeout=10).status_code == 401
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'adaptformer_requests_total{method="POST",route="/predict/{task}",status="200"}' in text
    for name in (
        "adaptformer_request_seconds_bucket",
        "adaptformer_batch_rows_bucket",
        "adaptformer_queue_depth",
        "adaptformer_tasks_resident",
        "adaptformer_task_loads_total",
        'adaptformer_errors_total{kind="auth"}',
    ):
        assert name in text, name
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["admission"]["max_queue"] == 20
    stop_server(process, remove_log=False)
    log = server_log(process)
    os.unlink(process.log_path)
    assert '"POST /predict/colour?top_k=4 HTTP/1.1" 200' in log
    assert KEY not in log


def test_https_with_the_key_on_every_endpoint(server, tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl here to make a self-signed certificate")
    _, _, _, tasks = server
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    process, url = start_server(
        [
            "--task-dir",
            str(tasks),
            "--api-key-file",
            str(_key_file(tmp_path)),
            "--auth-everything",
            "--ssl-keyfile",
            str(key),
            "--ssl-certfile",
            str(cert),
        ],
        scheme="https",
    )
    try:
        assert url.startswith("https://")
        assert httpx.get(f"{url}/ready", verify=False, timeout=10).status_code == 200  # probes need no key
        assert httpx.get(f"{url}/tasks", verify=False, timeout=10).status_code == 401
        listed = httpx.get(f"{url}/tasks", headers=AUTH, verify=False, timeout=10)
        assert listed.status_code == 200 and {t["name"] for t in listed.json()} >= {"colour", "probe"}
    finally:
        stop_server(process)


def _key_file(folder):
    path = folder / "api-key"
    path.write_text(KEY + "\n")
    return path
