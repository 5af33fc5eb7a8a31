"""Train-step time and peak memory per method and precision, with the ratios that matter.

    python benchmarks/train_speed.py --model vit_base_patch16_224 --batch 8 --precisions auto,fp32

Each (method, precision) runs in its own process so its peak memory is its own (CUDA: max allocated; CPU: peak
RSS, and its growth during the training steps: activations, gradients, optimizer state). Weights are random
(nothing is downloaded): speed does not depend on them. Prints a table and the ratios adaptformer/full step time
and fp32/default step time; ``--json`` writes the figures to a file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time


def measure(
    model_name: str, method: str, precision: str, batch: int, steps: int, warmup: int, device_name: str, options: dict
) -> dict:
    import torch
    import torch.nn.functional as F
    from adaptformer.train.distributed import pick_device
    from adaptformer.train.precision import autocast, make_grad_scaler, resolve_precision

    import adaptformer
    from adaptformer.data.transforms import InputSpec

    device = pick_device(device_name)
    precision = resolve_precision(precision, device)
    torch.manual_seed(0)
    model = (
        adaptformer.create_model(
            model_name, method, num_classes=100, pretrained=False, **(options if method == "adaptformer" else {})
        )
        .to(device)
        .train()
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = make_grad_scaler(precision, device)
    size = InputSpec.from_model(model).size
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        with autocast(precision, device):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - began)
    peak_mb = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    times.sort()
    baseline_mb = 0.0 if device.type == "cuda" else rss_before / 1024  # process + model before training
    return {
        "method": method,
        "precision": precision,
        "device": str(device),
        "step_s": times[len(times) // 2],
        "images_per_s": batch / times[len(times) // 2],
        "peak_mb": round(peak_mb, 1),
        "training_mb": round(peak_mb - baseline_mb, 1),
        "trainable": sum(p.numel() for p in params),
    }


def _child(queue, kwargs):
    try:
        queue.put(measure(**kwargs))
    except Exception as error:  # report, do not hang the parent
        queue.put({"error": f"{type(error).__name__}: {error}", **kwargs})


def run_isolated(**kwargs) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(queue, kwargs))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--methods", default="adaptformer,linear,vpt,full")
    parser.add_argument("--precisions", default="auto,fp32", help="comma-separated: auto, fp32, bf16, fp16")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--adapter-options", default="{}", help='JSON options for the adaptformer method, e.g. \'{"layers": "top:6"}\''
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    rows = []
    for precision in args.precisions.split(","):
        for method in args.methods.split(","):
            row = run_isolated(
                model_name=args.model,
                method=method,
                precision=precision,
                batch=args.batch,
                steps=args.steps,
                warmup=args.warmup,
                device_name=args.device,
                options=json.loads(args.adapter_options),
            )
            if "error" in row:
                print(f"{method} {precision}: {row['error']}", file=sys.stderr)
                return 1
            row["requested"] = precision
            rows.append(row)
            print(
                f"{method:<12} {row['precision']:<5} {row['step_s'] * 1000:9.1f} ms/step "
                f"{row['images_per_s']:8.1f} img/s  peak {row['peak_mb']:6.0f} MB "
                f"(+{row['training_mb']:.0f} training)  trainable {row['trainable']:,}",
                flush=True,
            )
    by = {(r["method"], r["requested"]): r for r in rows}
    ratios = {}
    for precision in args.precisions.split(","):
        if ("adaptformer", precision) in by and ("full", precision) in by:
            ratios[f"adaptformer/full step time ({by['adaptformer', precision]['precision']})"] = (
                by["adaptformer", precision]["step_s"] / by["full", precision]["step_s"]
            )
    if "auto" in args.precisions.split(",") and "fp32" in args.precisions.split(","):
        for method in args.methods.split(","):
            ratios[f"{method}: fp32 / {by[method, 'auto']['precision']} step time"] = (
                by[method, "fp32"]["step_s"] / by[method, "auto"]["step_s"]
            )
    print(f"\n{args.model}, batch {args.batch}, device {rows[0]['device']}")
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "ratios": ratios, "args": vars(args)}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
