"""Train-step time and peak memory per method and precision, with the ratios that matter.

    python benchmarks/train_speed.py --model vit_base_patch16_224 --batch 8 --precisions auto,fp32
    python benchmarks/train_speed.py --peers --precisions fp32 --methods adaptformer   # against PEFT / AdapterHub

Each measurement runs in its own process so its peak memory is its own (CUDA: max allocated; CPU: peak RSS, and
its growth during the training steps: activations, gradients, optimizer state). Weights are random (nothing is
downloaded): speed does not depend on them. ``--compile`` also times our model under ``torch.compile`` (the
warm-up steps absorb the compilation). ``--grad-checkpointing`` also times each method with its blocks
checkpointed (memory and step-time ratios printed). ``--peers`` (needs ``pip install -e ".[peers]"``) times, in
the same run, PEFT's LoRA (r=8 on the attention qkv) on the same timm ViT and AdapterHub's parallel bottleneck
adapter of the same size (reduction factor d/64) on Hugging Face's ViT-B, and prints our step as a ratio of the
fastest peer.
The CPU's flags are printed with the figures: compare ratios, measured in one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import time


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return platform.processor() or "unknown CPU"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "no AVX2"


def build_ours(model_name: str, method: str, options: dict, frames: int = 0):
    import adaptformer

    kwargs = {"num_frames": frames} if frames else None  # video: VideoMAE names, or an image ViT inflated
    return adaptformer.create_model(
        model_name, method, num_classes=100, pretrained=False, timm_kwargs=kwargs, **options
    )


def build_peft_lora(model_name: str):
    import timm
    from peft import LoraConfig, get_peft_model

    model = timm.create_model(model_name, pretrained=False, num_classes=100)
    config = LoraConfig(r=8, lora_alpha=8, target_modules=["qkv"], modules_to_save=["head"])
    return get_peft_model(model, config)


def architecture(model_name: str):
    """The timm model's shape, built on the meta device: no memory, so peak-RSS baselines stay honest."""
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(model_name, pretrained=False, num_classes=100)


def build_adapterhub_parallel(model_name: str):
    import adapters
    from adapters import ParBnConfig
    from transformers import ViTConfig, ViTForImageClassification

    reference = architecture(model_name)
    dim = reference.embed_dim
    config = ViTConfig(
        hidden_size=dim,
        num_hidden_layers=len(reference.blocks),
        num_attention_heads=reference.blocks[0].attn.num_heads,
        intermediate_size=4 * dim,
        image_size=reference.patch_embed.img_size[0],
        patch_size=reference.patch_embed.patch_size[0],
        num_labels=100,
    )
    model = ViTForImageClassification(config)
    adapters.init(model)
    model.add_adapter("task", config=ParBnConfig(reduction_factor=dim // 64))
    model.train_adapter("task")

    class Logits(__import__("torch").nn.Module):  # HF returns an output object; the loop wants logits
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(pixel_values=x).logits

    return Logits(model)


def measure(
    system: str,
    model_name: str,
    method: str,
    precision: str,
    batch: int,
    steps: int,
    warmup: int,
    device_name: str,
    options: dict,
    compile: bool,
    frames: int = 0,
    checkpointing: bool = False,
) -> dict:
    import torch
    import torch.nn.functional as F

    from adaptformer.runtime.device import pick_device
    from adaptformer.runtime.precision import autocast, make_grad_scaler, resolve_precision

    device = pick_device(device_name)
    precision = resolve_precision(precision, device)
    torch.manual_seed(0)
    if system == "ours":
        model = build_ours(model_name, method, options if method == "adaptformer" else {}, frames)
    elif system == "peft-lora":
        model = build_peft_lora(model_name)
    else:
        model = build_adapterhub_parallel(model_name)
    model = model.to(device).train()
    if checkpointing:
        model.set_grad_checkpointing(True)
    params = [p for p in model.parameters() if p.requires_grad]
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = make_grad_scaler(precision, device)
    # ours: the size the backbone's family declares (Hiera and others have no patch_embed.img_size)
    size = model.input_spec().size if system == "ours" else architecture(model_name).patch_embed.img_size[0]
    shape = (batch, 3, frames, size, size) if frames else (batch, 3, size, size)
    images = torch.randn(*shape, device=device)
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
            loss = F.cross_entropy(forward(images), labels)
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
    label = method if system == "ours" else system
    return {
        "system": system,
        "method": label + ("+compile" if compile else "") + ("+ckpt" if checkpointing else ""),
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


def peers_available() -> list[str]:
    import importlib.util

    found = []
    if importlib.util.find_spec("peft"):
        found.append("peft-lora")
    if importlib.util.find_spec("adapters"):
        found.append("adapterhub-parallel")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--methods", default="all", help="comma-separated, or all (every registered method)")
    parser.add_argument("--precisions", default="auto,fp32", help="comma-separated: auto, fp32, bf16, fp16")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also time our methods under torch.compile")
    parser.add_argument(
        "--frames",
        type=int,
        default=0,
        help="video: clips of N frames (e.g. --model videomae_base_patch16_224 --frames 8)",
    )
    parser.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="also time our methods with set_grad_checkpointing(True) (blocks recomputed in the backward pass)",
    )
    parser.add_argument("--peers", action="store_true", help="also time PEFT LoRA and AdapterHub (if installed)")
    parser.add_argument(
        "--adapter-options", default="{}", help='JSON options for the adaptformer method, e.g. \'{"layers": "top:6"}\''
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.methods == "all":
        from adaptformer.methods.registry import method_names

        args.methods = ",".join(method_names())

    plan = []
    for precision in args.precisions.split(","):
        for method in args.methods.split(","):
            plan.append(("ours", method, precision, False, False))
            if args.compile:
                plan.append(("ours", method, precision, True, False))
            if args.grad_checkpointing:
                plan.append(("ours", method, precision, False, True))
        if args.peers:
            missing = {"peft-lora", "adapterhub-parallel"} - set(peers_available())
            if args.frames:
                print("--peers: image models only; skipped for --frames", file=sys.stderr)
            elif missing:
                print(
                    f"--peers: not installed: {', '.join(sorted(missing))} (pip install -e '.[peers]')", file=sys.stderr
                )
            plan += [(peer, "", precision, False, False) for peer in peers_available() if not args.frames]
    print(f"CPU flags: {cpu_flags()}", flush=True)
    rows = []
    for system, method, precision, compiled, checkpointing in plan:
        row = run_isolated(
            system=system,
            model_name=args.model,
            method=method,
            precision=precision,
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
            device_name=args.device,
            options=json.loads(args.adapter_options),
            compile=compiled,
            frames=args.frames,
            checkpointing=checkpointing,
        )
        if "error" in row:
            print(f"{system} {method} {precision}: {row['error']}", file=sys.stderr)
            return 1
        row["requested"] = precision
        rows.append(row)
        print(
            f"{row['method']:<22} {row['precision']:<5} {row['step_s'] * 1000:9.1f} ms/step "
            f"{row['images_per_s']:8.1f} img/s  peak {row['peak_mb']:6.0f} MB "
            f"(+{row['training_mb']:.0f} training)  trainable {row['trainable']:,}",
            flush=True,
        )
    ratios = summarize(rows, args)
    clips = f", {args.frames}-frame clips" if args.frames else ""
    print(f"\n{args.model}{clips}, batch {args.batch}, device {rows[0]['device']}, CPU flags: {cpu_flags()}")
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "ratios": ratios, "args": vars(args), "cpu": cpu_flags()}, handle, indent=2)
    return 0


def summarize(rows: list[dict], args) -> dict[str, float]:
    by = {(r["method"], r["requested"]): r for r in rows}
    precisions = args.precisions.split(",")
    ratios = {}
    for precision in precisions:
        for suffix in ("", "+compile"):
            ours, full = by.get(("adaptformer" + suffix, precision)), by.get(("full" + suffix, precision))
            if ours and full:
                ratios[f"adaptformer/full step time{suffix} ({ours['precision']})"] = ours["step_s"] / full["step_s"]
        peers = [r for r in rows if r["system"] != "ours" and r["requested"] == precision]
        if peers:
            fastest = min(peers, key=lambda r: r["step_s"])
            for suffix in ("", "+compile"):
                ours = by.get(("adaptformer" + suffix, precision))
                if ours:
                    name = f"adaptformer{suffix} / fastest peer ({fastest['method']}, {fastest['precision']})"
                    ratios[name] = ours["step_s"] / fastest["step_s"]
    for method in args.methods.split(","):  # what checkpointing saves and costs
        for precision in precisions:
            plain, recomputed = by.get((method, precision)), by.get((method + "+ckpt", precision))
            if plain and recomputed:
                ratios[f"{method}: checkpointed / plain training memory"] = (
                    recomputed["training_mb"] / plain["training_mb"]
                )
                ratios[f"{method}: checkpointed / plain step time"] = recomputed["step_s"] / plain["step_s"]
    if "auto" in precisions and "fp32" in precisions:
        for method in args.methods.split(","):
            if (method, "fp32") in by and (method, "auto") in by:
                ratios[f"{method}: fp32 / {by[method, 'auto']['precision']} step time"] = (
                    by[method, "fp32"]["step_s"] / by[method, "auto"]["step_s"]
                )
    return ratios


if __name__ == "__main__":
    sys.exit(main())
