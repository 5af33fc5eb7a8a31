"""Soak test of ``adaptformer serve`` as a real client fleet and a hostile operator use it, for a bounded time.

    python benchmarks/soak.py --seconds 120 --clients 8

Two tasks on the embedded backbone plus a task directory that changes all the time. Each client loops over valid
predictions (random PNGs, one task, both, or every task) on one keep-alive connection, mixed with hostile requests:
not an image, an unknown task, a decompression-bomb header, a task file refused at load (NaN tensors), a foreign
Host header, invented HTTP methods (metric cardinality), a cross-origin refresh. Beside them a churn loop adds task
files (good ones, one whose header holds a string for a shape, a link out of the directory, random bytes), removes
files, refreshes, deletes tasks by name, and reads ``/tasks``, ``/metrics`` and ``/health`` while it does.
Resident memory is sampled every second after a warm-up; a server that leaks shows a climb between the first and
the last tenth. Prints requests per second, status counts (any 5xx is a defect), the churn's counts, the
server's metric series, and RSS (MiB) in the first and last tenth and at peak.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

import adaptformer


def png(rng: np.random.Generator, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb() -> bytes:
    """A tiny PNG whose header claims 30,000 x 30,000 pixels."""
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, format="PNG")
    return buffer.getvalue()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def client(url: str, stop: threading.Event, seed: int, counts: Counter, lock: threading.Lock, bomb_png: bytes):
    rng = np.random.default_rng(seed)
    with httpx.Client(timeout=60) as http:  # one keep-alive connection: a refused request must not break it
        while not stop.is_set():
            kind = rng.integers(0, 15)
            if kind == 12:  # an invented HTTP method: refused, and never a new metric series
                response = http.request(f"X{rng.integers(0, 10**6)}", f"{url}/predict")
            elif kind == 13:  # a cross-origin simple POST (a page on another site) must not refresh the store
                response = http.post(f"{url}/tasks/refresh", headers={"Origin": "http://evil.example"})
            elif kind == 14:  # every listed task at once, while the churn changes the list
                response = http.post(f"{url}/predict", files={"file": ("x.png", png(rng, 40))})
            elif kind == 10:  # a task file that is refused at load (NaN tensors): must leave nothing behind
                response = http.post(f"{url}/tasks", json={"file": "poisoned.safetensors", "name": f"p{seed}"})
            elif kind == 11:  # a Host header from a rebinding attack
                response = http.get(f"{url}/tasks", headers={"Host": "attacker.example"})
            elif kind == 0:
                response = http.post(f"{url}/predict", files={"file": ("x.png", b"not an image")})
            elif kind == 1:
                response = http.post(f"{url}/predict/nope", files={"file": ("x.png", png(rng, 32))})
            elif kind == 2:
                response = http.post(f"{url}/predict", files={"file": ("b.png", bomb_png)})
            else:
                tasks = "digits" if kind < 6 else "digits,probe"
                size = int(rng.integers(16, 96))
                response = http.post(f"{url}/predict?tasks={tasks}", files={"file": ("x.png", png(rng, size))})
            with lock:
                counts[response.status_code] += 1


def string_shape(good: bytes) -> bytes:
    """A task file whose safetensors header is valid JSON of the right length, with a string for a shape."""
    length = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + length])
    first = next(key for key in header if key != "__metadata__")
    header[first]["shape"] = ["99999999999"]
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + good[8 + length :]


def churn(url: str, folder: Path, stop: threading.Event, counts: Counter, lock: threading.Lock) -> None:
    """Change the task directory and the store while clients run; read the catalogue while it changes."""
    rng = np.random.default_rng(99)
    tasks = folder / "tasks"
    good = (folder / "probe.safetensors").read_bytes()
    with httpx.Client(timeout=60) as http:
        k = 0
        while not stop.is_set():
            k += 1
            action = k % 8
            name = f"c{rng.integers(0, 40)}"
            if action in (0, 1):  # a good file appears (or replaces one of the same name)
                (tasks / f"{name}.safetensors").write_bytes(good)
            elif action == 2:  # valid on the outside, wrong inside: a string for a shape
                (tasks / f"{name}.safetensors").write_bytes(string_shape(good))
            elif action == 3:  # a link out of the directory, and random bytes
                link = tasks / f"{name}.safetensors"
                link.unlink(missing_ok=True)
                link.symlink_to("/etc/hostname")
                (tasks / f"r{name}.safetensors").write_bytes(rng.bytes(256))
            elif action == 4:  # a file vanishes without a refresh
                victim = tasks / f"{name}.safetensors"
                victim.unlink(missing_ok=True)
            elif action == 5:
                response = http.delete(f"{url}/tasks/{name}")
                with lock:
                    counts[f"DELETE {response.status_code}"] += 1
            if action in (0, 2, 3, 6):
                response = http.post(f"{url}/tasks/refresh")
                with lock:
                    counts[f"refresh {response.status_code}"] += 1
            for path in ("/tasks", "/metrics", "/health"):
                response = http.get(f"{url}{path}")
                with lock:
                    counts[f"GET {path} {response.status_code}"] += 1
            time.sleep(0.05)


def series(url: str) -> int:
    """Metric series the server exposes (samples in its Prometheus text)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=10)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    for name, method in (("digits", "adaptformer"), ("probe", "linear")):
        model = adaptformer.create_model("adaptformer/vit-tiny-cifar10", method, num_classes=10)
        adaptformer.save_task(model, folder / f"{name}.safetensors")
    poisoned = adaptformer.create_model("adaptformer/vit-tiny-cifar10", "linear", num_classes=10)
    with torch.no_grad():
        for parameter in poisoned.task.parameters():
            parameter.fill_(float("nan"))
    adaptformer.save_task(poisoned, folder / "tasks" / "poisoned.safetensors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "adaptformer", "serve", "--port", str(port), "--precision", "fp32"]
    command += ["--task", str(folder / "digits.safetensors"), "--task", str(folder / "probe.safetensors")]
    command += ["--task-dir", str(folder / "tasks"), "--no-access-log", "--max-queue", "256"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    counts, lock, stop = Counter(), threading.Lock(), threading.Event()
    bomb_png = bomb()
    threads = [
        threading.Thread(target=client, args=(url, stop, seed, counts, lock, bomb_png)) for seed in range(args.clients)
    ]
    churn_counts = Counter()
    threads.append(threading.Thread(target=churn, args=(url, folder, stop, churn_counts, lock)))
    series_before = series(url)
    for thread in threads:
        thread.start()
    time.sleep(args.warmup)
    samples, began = [], time.time()
    with lock:
        served_before = sum(counts.values())
    while time.time() - began < args.seconds:
        samples.append(rss_mib(server.pid))
        time.sleep(1)
    with lock:
        served = sum(counts.values()) - served_before
    series_after = series(url)
    stop.set()
    for thread in threads:
        thread.join()
    alive = server.poll() is None
    server.terminate()
    server.wait(timeout=20)
    tenth = max(1, len(samples) // 10)
    first, last = np.mean(samples[:tenth]), np.mean(samples[-tenth:])
    print(f"cpu flags: {' '.join(f for f in ('avx512_bf16', 'amx_tile') if f in Path('/proc/cpuinfo').read_text())}")
    print(
        f"{args.clients} clients, {args.seconds:.0f} s after {args.warmup:.0f} s warm-up: {served} requests "
        f"({served / args.seconds:.1f}/s); status counts {dict(sorted(counts.items()))}; server alive: {alive}"
    )
    errors = sum(n for code, n in counts.items() if code >= 500)
    errors += sum(n for key, n in churn_counts.items() if key.split()[-1].startswith("5"))
    print(
        f"churn (refresh, add, remove, delete, reads of /tasks /metrics /health): {dict(sorted(churn_counts.items()))}"
    )
    print(f"5xx answers: {errors}; metric series before / after: {series_before} / {series_after}")
    print(
        f"RSS MiB: first tenth {first:.1f}, last tenth {last:.1f}, peak {max(samples):.1f} "
        f"(change {last - first:+.1f} MiB over {len(samples)} samples)"
    )


if __name__ == "__main__":
    main()
