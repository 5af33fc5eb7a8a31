"""``--quantize int8`` on this CPU: ViT-B/16 throughput at batch 32 in fp32, bf16 and int8 (an AdaptFormer task on
the backbone, in one run), and ``adaptformer predict`` over a folder of images with ``--quantize int8`` against
``--precision fp32``, start-up included.

    python benchmarks/int8_serving.py                       # random ViT-B/16 weights: speed does not depend on them
    python benchmarks/int8_serving.py --checkpoint vit_b16.safetensors --images photos/

Accuracy is measured on a trained task with ``adaptformer eval --quantize int8`` against the same without (README).
Run it alone: a second heavy job on the machine makes the figures meaningless.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

import adaptformer
from adaptformer.runtime.precision import autocast


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "none of AVX2/AVX-512/AMX"


def throughput(model, x: torch.Tensor, precision: str, repeats: int) -> float:
    with torch.no_grad(), autocast(precision, torch.device("cpu")):
        model(x)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return repeats * len(x) / (time.perf_counter() - start)


def task_file(folder: Path, checkpoint: str | None) -> tuple[Path, Path]:
    if checkpoint is None:
        torch.manual_seed(12345)  # not the seed a fresh model is compared with when the file is checked
        backbone = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        checkpoint = folder / "vit_b16.safetensors"
        from safetensors.torch import save_file

        save_file(backbone.state_dict(), str(checkpoint))
    model = adaptformer.create_model("vit_base_patch16_224", "adaptformer", num_classes=100, checkpoint=checkpoint)
    return adaptformer.save_task(model, folder / "task.safetensors"), Path(checkpoint)


def predict_seconds(task: Path, checkpoint: Path, images: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "adaptformer", "predict", "--task", str(task), "--checkpoint", str(checkpoint),
               "--device", "cpu", "--batch-size", "32", *extra, str(images)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="ViT-B/16 weights (default: random ones)")
    parser.add_argument("--images", default=None, help="a folder of images (default: 128 generated 224 px images)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU flags: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        task, checkpoint = task_file(folder, args.checkpoint)
        x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        rates = {}
        model = adaptformer.load_task(task, checkpoint=checkpoint).eval()
        for precision in ("fp32", "bf16"):
            rates[precision] = throughput(model, x, precision, args.repeats)
        model.quantize_backbone("int8")
        rates["int8"] = throughput(model, x, "fp32", args.repeats)
        shown = ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
        print(f"ViT-B/16 + AdaptFormer, batch {args.batch}, images/s: {shown}")
        print(f"int8 / fp32 = {rates['int8'] / rates['fp32']:.2f}x, bf16 / fp32 = {rates['bf16'] / rates['fp32']:.2f}x")
        images = Path(args.images) if args.images else folder / "images"
        if not args.images:
            images.mkdir()
            rng = np.random.default_rng(0)
            for i in range(128):
                Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
        fp32 = predict_seconds(task, checkpoint, images, ["--precision", "fp32"])
        int8 = predict_seconds(task, checkpoint, images, ["--quantize", "int8"])
        count = sum(1 for _ in images.iterdir())
        print(f"adaptformer predict over {count} images, start-up included: fp32 {fp32:.1f} s, int8 {int8:.1f} s "
              f"({fp32 / int8:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
