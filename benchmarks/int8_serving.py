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
import copy
import statistics
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
from adaptformer.adapted.int8 import int8_engine
from adaptformer.runtime.precision import autocast


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "none of AVX2/AVX-512/AMX"


def batch_seconds(model, x: torch.Tensor, precision: str) -> float:
    with torch.no_grad(), autocast(precision, torch.device("cpu")):
        start = time.perf_counter()
        model(x)
    return time.perf_counter() - start


def throughputs(setups: dict, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Images/s of each ``name: (model, precision)``, from the median of ``repeats`` batches taken round-robin
    (this shared host's speed drifts by 10-20 % over a minute; one setup after the other would compare drifts)."""
    for model, precision in setups.values():
        batch_seconds(model, x, precision)  # warm-up
    seconds = {name: [] for name in setups}
    for _ in range(repeats):
        for name, (model, precision) in setups.items():
            seconds[name].append(batch_seconds(model, x, precision))
    return {name: len(x) / statistics.median(times) for name, times in seconds.items()}


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
    parser.add_argument("--repeats", type=int, default=5, help="batches per setup, round-robin (median)")
    parser.add_argument("--predict-rounds", type=int, default=3, help="predict runs of each, alternating")
    args = parser.parse_args()
    print(
        f"CPU flags: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"int8 kernels: {int8_engine()}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        task, checkpoint = task_file(folder, args.checkpoint)
        x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        model = adaptformer.load_task(task, checkpoint=checkpoint).eval()
        quantized = copy.deepcopy(model)
        quantized.quantize_backbone("int8")
        setups = {"fp32": (model, "fp32"), "bf16": (model, "bf16"), "int8": (quantized, "fp32")}
        rates = throughputs(setups, x, args.repeats)
        del model, quantized
        shown = ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
        print(f"ViT-B/16 + AdaptFormer, batch {args.batch}, images/s: {shown}")
        print(f"int8 / fp32 = {rates['int8'] / rates['fp32']:.2f}x, bf16 / fp32 = {rates['bf16'] / rates['fp32']:.2f}x")
        images = Path(args.images) if args.images else folder / "images"
        if not args.images:
            images.mkdir()
            rng = np.random.default_rng(0)
            for i in range(128):
                Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
        runs = {"fp32": ["--precision", "fp32"], "int8": ["--quantize", "int8"]}
        seconds = {name: [] for name in runs}
        for _ in range(args.predict_rounds):  # alternating, as above
            for name, extra in runs.items():
                seconds[name].append(predict_seconds(task, checkpoint, images, extra))
        fp32, int8 = (statistics.median(seconds[name]) for name in runs)
        shown = {name: " / ".join(f"{t:.1f}" for t in times) for name, times in seconds.items()}
        count = sum(1 for _ in images.iterdir())
        print(
            f"adaptformer predict over {count} images, start-up included (median of {args.predict_rounds}): "
            f"fp32 {fp32:.1f} s ({shown['fp32']}), int8 {int8:.1f} s ({shown['int8']}): {fp32 / int8:.2f}x"
        )


if __name__ == "__main__":
    main()
