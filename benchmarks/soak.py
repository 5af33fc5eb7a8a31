"""Soak test of ``adaptformer serve``: concurrent clients for a bounded time; prints resident memory over time.

    python benchmarks/soak.py --seconds 120 --clients 8

Two tasks on the embedded backbone; each client loops over valid predictions (random PNGs, one or both tasks)
and a share of bad requests (not an image, an unknown task, a decompression bomb header, a task file refused at
load, a foreign Host header). Resident memory is
sampled every second after a warm-up; a server that leaks shows a steady climb between the first and the last
samples. Prints requests per second, status counts, and RSS (MiB) at the start, end and peak.
"""

from __future__ import annotations

import argparse
import io
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
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            kind = rng.integers(0, 12)
            if kind == 10:  # a task file that is refused at load (NaN tensors): must leave nothing behind
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
    print(
        f"RSS MiB: first tenth {first:.1f}, last tenth {last:.1f}, peak {max(samples):.1f} "
        f"(change {last - first:+.1f} MiB over {len(samples)} samples)"
    )


if __name__ == "__main__":
    main()
