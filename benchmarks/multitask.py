"""Many tasks on one backbone, measured in one run: mixed batches, memory, overhead, and the server.

    python benchmarks/multitask.py                        # ViT-B/16, 224 px, random weights (nothing downloaded)
    python benchmarks/multitask.py --model vit_small_patch16_224 --requests 32

Prints, with the CPU's flags:
* throughput of a batch of 32 mixed over 8 AdaptFormer tasks / the same batch all of one task (target >= 0.95);
* the same for PEFT's LoRA ``adapter_names`` mixed batch on the same timm ViT, if PEFT is installed;
* resident memory with 20 tasks loaded / with 1 task (target <= 1.1), each measured in a fresh process;
* adapted inference / plain frozen backbone inference, same batch (target <= 1.05);
* server requests/s and p50/p99 latency at 1, 4 and 16 concurrent clients, with and without cross-task batching
  (a real ``adaptformer serve`` on 127.0.0.1, bounded requests, stopped afterwards).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import cpu_flags  # noqa: E402


def interleaved(functions: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, measured round-robin so that drift in the machine's speed (shared hosts)
    affects all of them alike; one warm-up call each first."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            began = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}


def make_bank(model_name: str, tasks: int, bottleneck: int = 64):
    import adaptformer

    model = adaptformer.create_model(
        model_name, "adaptformer", num_classes=10, pretrained=False, task="t0", bottleneck=bottleneck
    )
    generator = torch.Generator().manual_seed(0)
    for k in range(1, tasks):
        model.add_task(f"t{k}", "adaptformer", 10, bottleneck=bottleneck, activate=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("tasks."):
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return model.eval()


def mixed_vs_single(args) -> dict:
    from adaptformer.runtime.precision import autocast, resolve_precision

    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    model = make_bank(args.model, 8)
    x = torch.randn(32, 3, 224, 224)
    mixed = [f"t{i % 8}" for i in range(32)]

    def run(**kwargs):
        with torch.no_grad(), autocast(precision, device):
            model(x, **kwargs)

    plain = _plain_backbone(args.model)

    def run_plain():
        with torch.no_grad(), autocast(precision, device):
            plain(x)

    medians = interleaved(
        {"single": lambda: run(task="t0"), "mixed": lambda: run(tasks=mixed), "plain": run_plain}, args.repeats
    )
    single, mixed_t, plain_t = medians["single"], medians["mixed"], medians["plain"]
    return {
        "precision": precision,
        "single_s": single,
        "mixed_s": mixed_t,
        "plain_s": plain_t,
        "mixed_throughput_ratio": single / mixed_t,
        "adapted_over_plain": single / plain_t,
    }


def _plain_backbone(model_name: str):
    import timm

    torch.manual_seed(0)
    return timm.create_model(model_name, pretrained=False, num_classes=10).eval()


def peft_mixed(args) -> dict | None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return None
    from adaptformer.runtime.precision import autocast, resolve_precision

    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    model = _plain_backbone(args.model)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["qkv"], init_lora_weights=False), adapter_name="t0")
    for k in range(1, 8):
        model.add_adapter(f"t{k}", LoraConfig(r=8, target_modules=["qkv"], init_lora_weights=False))
    model.set_adapter("t0")
    model.eval()
    x = torch.randn(32, 3, 224, 224)
    names = [f"t{i % 8}" for i in range(32)]

    def run(**kwargs):
        with torch.no_grad(), autocast(precision, device):
            model(x, **kwargs)

    medians = interleaved({"single": lambda: run(), "mixed": lambda: run(adapter_names=names)}, args.repeats)
    single, mixed = medians["single"], medians["mixed"]
    return {"single_s": single, "mixed_s": mixed, "mixed_throughput_ratio": single / mixed}


def _rss_child(queue, model_name, tasks):
    import gc

    model = make_bank(model_name, tasks)
    gc.collect()
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224), task="t0")
    with open("/proc/self/status") as handle:
        rss = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS"))
    queue.put(
        {"tasks": tasks, "rss_mb": rss / 1024, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    )


def memory(args) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for tasks in (1, 20):
        queue = ctx.Queue()
        process = ctx.Process(target=_rss_child, args=(queue, args.model, tasks))
        process.start()
        out[tasks] = queue.get()
        process.join()
    return {"rss_1_mb": out[1]["rss_mb"], "rss_20_mb": out[20]["rss_mb"], "ratio": out[20]["rss_mb"] / out[1]["rss_mb"]}


def server(args) -> list[dict]:
    """A real server with 8 task files; each concurrency level sends ``--requests`` single-image requests."""
    from PIL import Image
    from safetensors.torch import save_file

    import adaptformer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_bank(args.model, 8)
        save_file(
            {k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(tmp / "backbone.safetensors")
        )
        tasks = []
        for k in range(8):
            tasks += ["--task", str(adaptformer.save_task(model, tmp / f"t{k}.safetensors", task=f"t{k}"))]
        del model
        image = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(image, "PNG")
        payload = image.getvalue()
        for batching in (True, False):
            port = _free_port()
            command = [
                sys.executable,
                "-m",
                "adaptformer",
                "serve",
                *tasks,
                "--model",
                args.model,
                "--checkpoint",
                str(tmp / "backbone.safetensors"),
                "--port",
                str(port),
                "--max-wait-ms",
                "10",
                "--precision",
                args.precision,
                *([] if batching else ["--no-batching"]),
            ]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}"
            try:
                _wait(url, process)
                for clients in (1, 4, 16):
                    rows.append(_load(url, payload, clients, args.requests, batching))
                    print(_format_server(rows[-1]), flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)
    return rows


def _load(url: str, payload: bytes, clients: int, requests: int, batching: bool) -> dict:
    import httpx

    def one(k: int) -> float:
        began = time.perf_counter()
        response = httpx.post(f"{url}/predict/t{k % 8}", files={"file": ("x.png", payload, "image/png")}, timeout=120)
        response.raise_for_status()
        return time.perf_counter() - began

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))  # warm-up
        began = time.perf_counter()
        latencies = sorted(pool.map(one, range(requests)))
        wall = time.perf_counter() - began
    return {
        "batching": batching,
        "clients": clients,
        "requests": requests,
        "per_s": requests / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def _format_server(row: dict) -> str:
    mode = "batching   " if row["batching"] else "no batching"
    return (
        f"server {mode} {row['clients']:>2} clients: {row['per_s']:6.2f} req/s  p50 {row['p50_ms']:7.1f} ms  "
        f"p99 {row['p99_ms']:7.1f} ms"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, process) -> None:
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    print(f"{args.model}, CPU flags: {cpu_flags()}", flush=True)
    figures = {"mixed": mixed_vs_single(args)}
    m = figures["mixed"]
    print(
        f"batch 32 ({m['precision']}): one task {m['single_s'] * 1000:.0f} ms, "
        f"mixed over 8 tasks {m['mixed_s'] * 1000:.0f} ms, plain backbone {m['plain_s'] * 1000:.0f} ms",
        flush=True,
    )
    print(f"  mixed / single-task throughput: {m['mixed_throughput_ratio']:.3f} (target >= 0.95)")
    print(f"  adapted / plain inference time: {m['adapted_over_plain']:.3f} (target <= 1.05)", flush=True)
    figures["peft"] = peft_mixed(args)
    if figures["peft"]:
        p = figures["peft"]
        print(
            f"PEFT LoRA r=8, 8 adapters: one {p['single_s'] * 1000:.0f} ms, mixed {p['mixed_s'] * 1000:.0f} ms, "
            f"mixed / single throughput {p['mixed_throughput_ratio']:.3f}",
            flush=True,
        )
    else:
        print("PEFT not installed: its mixed batch is not measured (pip install -e '.[peers]')")
    figures["memory"] = memory(args)
    mem = figures["memory"]
    print(
        f"resident memory: 1 task {mem['rss_1_mb']:.0f} MB, 20 tasks {mem['rss_20_mb']:.0f} MB, "
        f"ratio {mem['ratio']:.3f} (target <= 1.1)",
        flush=True,
    )
    if not args.skip_server:
        figures["server"] = server(args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
