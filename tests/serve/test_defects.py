"""Defects a real client found in ``adaptformer serve``, each checked against the real server (a subprocess on
127.0.0.1) the way it was found: a task file that is valid JSON outside and wrong inside, a task file deleted
without a refresh, a keep-alive connection after a 500, reads racing a refresh loop, and invented HTTP methods
growing the metrics."""

import io
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from launch import start_server, stop_server
from PIL import Image

import adaptformer

MODEL = "adaptformer/vit-tiny-cifar10"
#: imported by the server subprocess at start-up: GET /tasks raises a plain exception while the marker file exists
FAULT = """
import os
import sys
from adaptformer import bank

sys.setswitchinterval(2e-4)  # threads switch often: a read racing the model thread is caught in seconds

_infos = bank.TaskBank.infos


def infos(self):
    if os.path.exists(os.environ["ADAPTFORMER_TEST_FAULT"]):
        raise RuntimeError("injected by the test")
    return _infos(self)


bank.TaskBank.infos = infos

_logits = bank.TaskBank.logits


def logits(self, *args, **kwargs):
    slow = os.environ.get("ADAPTFORMER_TEST_SLOW")
    if slow and os.path.exists(slow):
        import time

        time.sleep(4)
    return _logits(self, *args, **kwargs)


bank.TaskBank.logits = logits
"""


def fault_hooks(folder: Path, **markers: Path) -> dict:
    """Environment for a server that imports the fault hooks above (``markers``: their marker files)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(FAULT)
    env = {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    env["ADAPTFORMER_TEST_FAULT"] = str(markers.get("fault", folder / "no-fault"))
    env["ADAPTFORMER_TEST_SLOW"] = str(markers.get("slow", folder / "no-slow"))
    return env


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def save(folder: Path, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    model = adaptformer.create_model(MODEL, "adaptformer", num_classes=3, bottleneck=4)
    return adaptformer.save_task(model, folder / f"{name}.safetensors")


def with_header(source: Path, target: Path, change) -> None:
    """``target``: ``source`` with its safetensors header changed by ``change(header)``, still valid JSON."""
    data = source.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("defects")
    tasks = root / "tasks"
    for seed, name in enumerate(("one", "two", "three", "spare")):
        save(tasks, name, seed)
    marker = root / "fault"
    env = fault_hooks(root / "hooks", fault=marker)
    process, url = start_server(["--task-dir", str(tasks), "--precision", "fp32", "--max-wait-ms", "5"], env=env)
    yield url, tasks, marker
    stop_server(process)


def predict(url: str, path: str = "/predict", seed: int = 0) -> httpx.Response:
    return httpx.post(f"{url}{path}", files={"file": ("x.png", png(seed), "image/png")}, timeout=60)


def test_a_header_that_is_json_outside_and_wrong_inside_is_listed_unusable_and_fails_nothing(server):
    url, tasks, _ = server

    def string_shape(header):
        key = next(k for k, v in header.items() if k != "__metadata__" and v["shape"])
        header[key]["shape"] = [str(n) for n in header[key]["shape"]]  # "shape": ["4"]

    with_header(tasks / "one.safetensors", tasks / "hostile.safetensors", string_shape)
    with_header(tasks / "one.safetensors", tasks / "offsets.safetensors", lambda h: _shift_offsets(h, 4))
    try:
        assert httpx.post(f"{url}/tasks/refresh", timeout=60).status_code == 200
        rows = {row["name"]: row for row in httpx.get(f"{url}/tasks").json()}
        for name in ("hostile", "offsets"):
            assert rows[name]["usable"] is False and "not a readable safetensors file" in rows[name]["error"]
            refused = predict(url, f"/predict/{name}")
            assert refused.status_code == 404 and "\n" not in refused.json()["detail"]
        every = predict(url)
        assert every.status_code == 200
        assert {r["task"] for r in every.json()["results"]} >= {"one", "two", "three"}
        assert httpx.get(f"{url}/ready").status_code == 200
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
    finally:
        (tasks / "hostile.safetensors").unlink()
        (tasks / "offsets.safetensors").unlink()
        httpx.post(f"{url}/tasks/refresh", timeout=60)


def _shift_offsets(header: dict, by: int) -> None:
    for key, entry in header.items():
        if key != "__metadata__":
            entry["data_offsets"] = [entry["data_offsets"][0], entry["data_offsets"][1] + by]
            return


def test_a_task_file_deleted_without_a_refresh_leaves_the_others_answering(server):
    url, tasks, _ = server
    late = save(tasks, "late", 7)
    kept = late.read_bytes()
    assert httpx.post(f"{url}/tasks/refresh", timeout=60).json()["added"] == ["late"]
    late.unlink()  # still listed (no refresh yet) and never loaded: its tensors are nowhere now
    try:
        every = predict(url, seed=3)
        assert every.status_code == 200, every.text
        answered = {r["task"] for r in every.json()["results"]}
        assert "late" not in answered and {"one", "two", "three"} <= answered
        alone = predict(url, "/predict/late")
        assert alone.status_code == 404 and "no such file" in alone.json()["detail"]
        row = next(r for r in httpx.get(f"{url}/tasks").json() if r["name"] == "late")
        assert row["usable"] is False and "no such file" in row["error"]
    finally:
        late.write_bytes(kept)
        assert httpx.post(f"{url}/tasks/refresh", timeout=60).json()["changed"] == ["late"]
    assert predict(url, "/predict/late").status_code == 200  # listed again once the file is back
    late.unlink()
    late.with_suffix(".json").unlink()
    httpx.post(f"{url}/tasks/refresh", timeout=60)


def test_a_500_leaves_the_keep_alive_connection_usable(server):
    url, _, marker = server
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").status_code == 200
        marker.touch()
        try:
            failed = client.get("/tasks")
        finally:
            marker.unlink()
        assert failed.status_code == 500
        assert failed.json()["detail"] == "internal error (RuntimeError); see the server log"
        statuses = [client.get("/health").status_code for _ in range(20)]  # the same connection, kept alive
    assert statuses == [200] * 20


def test_reads_of_the_task_list_race_a_refresh_loop_without_a_5xx(server):
    url, tasks, _ = server
    stop = threading.Event()
    seen: list[int] = []

    spare = tasks.parent / "spare-files"
    spare.mkdir(exist_ok=True)
    sources = [save(spare, f"churn{k}", 10 + k) for k in range(8)]
    many = [tasks / f"copy{k:03d}.safetensors" for k in range(200)]  # a long list: iterating it takes a while
    for path in many:
        path.write_bytes((tasks / "one.safetensors").read_bytes())

    def churn():  # files added and removed, and the directory scanned again, as fast as it goes
        k = 0
        while not stop.is_set():
            source = sources[k % len(sources)]
            target = tasks / source.name
            if target.exists():
                target.unlink()
            else:
                target.write_bytes(source.read_bytes())
            httpx.post(f"{url}/tasks/refresh", timeout=60)
            k += 1

    def read():
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                for path in ("/tasks", "/health", "/metrics"):
                    try:
                        seen.append(client.get(path).status_code)
                    except httpx.HTTPError as error:  # a connection dropped after a 500 counts as a failure
                        seen.append(type(error).__name__)

    threads = [threading.Thread(target=churn), threading.Thread(target=read), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    time.sleep(4)
    stop.set()
    for thread in threads:
        thread.join()
    for leftover in [*tasks.glob("churn*"), *many]:
        leftover.unlink(missing_ok=True)
    httpx.post(f"{url}/tasks/refresh", timeout=60)
    assert len(seen) > 100 and set(seen) == {200}, sorted(set(map(str, seen)))


def test_invented_http_methods_add_no_series_to_the_metrics(server):
    url, _, _ = server
    before = httpx.get(f"{url}/metrics").text.count("adaptformer_requests_total{")
    with httpx.Client(base_url=url, timeout=30) as client:
        for k in range(60):
            client.request(f"INVENTED{k}", "/health")
    after = httpx.get(f"{url}/metrics").text
    assert "INVENTED" not in after
    assert after.count("adaptformer_requests_total{") <= before + 2  # the OTHER series (and /metrics itself)


KEY = "k" * 8 + "-defects-key-0123456789"


def test_auth_everything_still_serves_the_page_and_the_docs_which_ask_for_the_key(tmp_path):
    save(tmp_path / "tasks", "one", 0)
    arguments = ["--task-dir", str(tmp_path / "tasks"), "--api-key", KEY, "--auth-everything"]
    process, url = start_server(arguments)
    try:
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="keyrow"' in page.text  # where the page asks for the key after its first 401
        docs = httpx.get(f"{url}/docs")
        assert docs.status_code == 200
        assets = [part.split('"')[0] for part in docs.text.split('"/assets/docs/')[1:]]
        assert assets and all(httpx.get(f"{url}/assets/docs/{asset}").status_code == 200 for asset in assets)
        assert httpx.get(f"{url}/openapi.json").status_code == 200
        for path in ("/tasks", "/health", "/metrics"):  # everything that holds data still needs the key
            assert httpx.get(f"{url}{path}").status_code == 401
            assert httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    finally:
        stop_server(process)


def test_an_allowed_host_adds_to_loopback_and_a_server_on_every_interface_takes_ip_addresses(tmp_path):
    save(tmp_path / "tasks", "one", 0)
    process, url = start_server(["--task-dir", str(tmp_path / "tasks"), "--allowed-host", "vision.example.org"])
    try:
        for host, status in (("vision.example.org", 200), ("127.0.0.1", 200), ("localhost", 200), ("[::1]", 200),
                             ("evil.example.com", 400)):  # fmt: skip
            assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == status, host
    finally:
        stop_server(process)
    arguments = ["--task-dir", str(tmp_path / "tasks"), "--host", "0.0.0.0", "--api-key", KEY]
    process, url = start_server(arguments)
    try:
        for host, status in (("10.1.2.3", 200), ("[fe80::1]", 200), ("localhost", 200),
                             ("rebound.attacker.example", 400)):  # fmt: skip
            assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == status, host
    finally:
        stop_server(process)


def raw_exchange(url: str, request: bytes) -> tuple[int, dict, bytes]:
    """Send ``request`` bytes on a fresh connection; the status, headers and body of what comes back."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: +5\r\n\r\nhello",
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"\x16\x03\x01 not HTTP at all\r\n\r\n",
    ],
)
def test_a_request_uvicorn_cannot_parse_gets_one_line_of_json(server, request_bytes):
    url, _, _ = server
    status, headers, body = raw_exchange(url, request_bytes)
    assert status == 400 and headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert json.loads(body)["detail"].startswith("malformed HTTP request")


def test_a_connection_beyond_the_limit_gets_json_and_retry_after(tmp_path):
    save(tmp_path / "tasks", "one", 0)
    process, url = start_server(["--task-dir", str(tmp_path / "tasks"), "--max-connections", "2"])
    host, port = url.split("//")[1].split(":")
    held = [socket.create_connection((host, int(port))) for _ in range(2)]  # open and idle: they count
    try:
        time.sleep(0.3)
        answer = httpx.get(f"{url}/health", timeout=10)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.json()["detail"].startswith("too many open connections")
    finally:
        for connection in held:
            connection.close()
        stop_server(process)


def test_a_request_still_running_when_the_grace_ends_gets_a_json_503(tmp_path):
    save(tmp_path / "tasks", "one", 0)
    slow = tmp_path / "slow"
    env = fault_hooks(tmp_path / "hooks", slow=slow)
    process, url = start_server(["--task-dir", str(tmp_path / "tasks"), "--shutdown-grace", "1"], env=env)
    answers = []
    slow.touch()  # the model takes 4 s from now on
    thread = threading.Thread(target=lambda: answers.append(predict(url, "/predict/one")))
    thread.start()
    time.sleep(1.5)
    try:
        process.terminate()  # SIGTERM: 1 s of grace, then the request is cut
        thread.join(timeout=30)
        process.wait(timeout=30)
    finally:
        stop_server(process)  # already down: this only removes its log
    (answer,) = answers
    assert answer.status_code == 503 and answer.headers["content-type"] == "application/json"
    assert answer.json()["detail"] == "the server is shutting down; try again"


def test_a_long_clip_is_refused_by_its_frame_limit_before_it_is_decoded(tmp_path):
    from test_media import matroska_clip

    save(tmp_path / "tasks", "one", 0)
    process, url = start_server(["--task-dir", str(tmp_path / "tasks"), "--max-clip-frames", "100"])
    try:
        started = time.perf_counter()
        files = {"file": ("long.mkv", matroska_clip(3000, side=64), "video/x-matroska")}
        answer = httpx.post(f"{url}/predict", files=files, timeout=60)
        assert answer.status_code == 413
        assert answer.json()["detail"] == "a clip of more than 100 frames (--max-clip-frames)"
        assert time.perf_counter() - started < 5
    finally:
        stop_server(process)


def test_refresh_says_nothing_of_unchanged_unusable_files_follows_no_link_out_and_keeps_a_delete(tmp_path):
    tasks = tmp_path / "tasks"
    save(tasks, "one", 0)
    save(tasks, "two", 1)
    (tasks / "noise.safetensors").write_bytes(os.urandom(4096))  # random bytes
    (tasks / "system.safetensors").symlink_to("/etc/hostname")  # a link to a file outside the directory
    outside = save(tmp_path / "elsewhere", "valid", 2)
    (tasks / "escape.safetensors").symlink_to(outside)  # a valid task file, but outside the directory
    process, url = start_server(["--task-dir", str(tasks)])
    try:
        rows = {row["name"]: row for row in httpx.get(f"{url}/tasks").json()}
        assert rows["escape"]["usable"] is False and "outside the task directory" in rows["escape"]["error"]
        assert rows["system"]["usable"] is False and rows["noise"]["usable"] is False
        assert predict(url, "/predict/escape").status_code == 404  # never served
        nothing = {"added": [], "removed": [], "changed": []}
        assert httpx.post(f"{url}/tasks/refresh", timeout=60).json() == nothing  # twice: still nothing
        assert httpx.post(f"{url}/tasks/refresh", timeout=60).json() == nothing
        removed = httpx.delete(f"{url}/tasks/two", timeout=30).json()
        assert removed["removed"] == "two" and "listed again once it changes" in removed["note"]
        assert httpx.post(f"{url}/tasks/refresh", timeout=60).json() == nothing  # the DELETE holds
        assert "two" not in {row["name"] for row in httpx.get(f"{url}/tasks").json()}
        save(tasks, "two", 5)  # a new version of the file
        assert httpx.post(f"{url}/tasks/refresh", timeout=60).json()["added"] == ["two"]
    finally:
        stop_server(process)


def test_messages_keep_routes_articles_and_the_servers_own_pixel_limit(server, tmp_path):
    from test_media import matroska_clip

    url, tasks, _ = server
    version = save(tasks, "moving", 20)
    assert httpx.post(f"{url}/tasks/refresh", timeout=60).json()["added"] == ["moving"]
    version.write_bytes(save(tmp_path, "other", 21).read_bytes())  # a new version, not yet refreshed
    try:
        changed = predict(url, "/predict/moving")
        assert changed.status_code == 409 and "POST /tasks/refresh" in changed.json()["detail"]
    finally:
        version.unlink()
        version.with_suffix(".json").unlink()
        httpx.post(f"{url}/tasks/refresh", timeout=60)
    clip = httpx.post(f"{url}/predict/one", files={"file": ("c.mkv", matroska_clip(8), "video/x-matroska")})
    assert clip.status_code == 422 and "'one': an image task; send it an image" in clip.json()["detail"]
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")  # 400 megapixels in a few kilobytes
    bomb = httpx.post(f"{url}/predict/one", files={"file": ("b.png", buffer.getvalue(), "image/png")}, timeout=60)
    assert bomb.status_code == 413
    assert bomb.json()["detail"] == "image of 400000000 pixels; at most 40000000"


def test_a_page_of_another_site_can_neither_refresh_nor_run_the_model(server):
    url, _, _ = server
    port = url.rsplit(":", 1)[1]
    evil = {"Origin": "http://evil.example"}
    for path in ("/tasks/refresh", "/predict"):
        refused = httpx.post(f"{url}{path}", headers=evil, files={"file": ("x.png", png(0), "image/png")})
        assert refused.status_code == 403 and refused.json()["detail"].startswith("Origin 'http://evil.example'")
    own = {"Origin": f"http://127.0.0.1:{port}"}  # the server's own page
    assert httpx.post(f"{url}/tasks/refresh", headers=own, timeout=60).status_code == 200
    assert httpx.get(f"{url}/tasks", headers=evil).status_code == 200  # reading is not refused (no CORS: unreadable)
