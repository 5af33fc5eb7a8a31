"""Census: does every timm and Hugging Face vision model with an MLP block adapt, found by its anatomy?

For the first model of every timm name prefix (``name.split("_")[0]``: 289 in timm 1.0.31) and every Hugging Face
vision class of the list below, with random weights and a tiny configuration where the model takes one (fewer
blocks), this builds the model, adapts it with AdaptFormer through the public ``adaptformer.adapt`` and checks:

* **adapts**: zero-initialised adapters leave ``forward_features`` unchanged (within 1e-5 x max(1, its largest
  value)) and a non-zero Up moves it (by more than a thousandth of its largest value; each adapter's Up random);
* **refused: <reason>**: ``adapt`` refused in one line (the reason is printed);
* **crash**: anything else (a traceback, a wrong answer).

For each model it also records whether its blocks hold an MLP module (any module whose class is named like an MLP
outside the classifier head: the issue's 78-prefix count), where the adapter reads (``residual`` or
``mlp_input``), and which of LoRA / BitFit / SSF / VPT it hosts. Results go to ``--out`` (JSONL, resumable: models
already there are skipped) and a table to ``docs/results/census.md``.

    python benchmarks/census.py                        # all (about 20 minutes on 2 cores)
    python benchmarks/census.py --only convnext swin   # some prefixes
    python benchmarks/census.py --device cuda --dtype bfloat16   # the GPU check
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import signal
import sys
import time
import traceback
from pathlib import Path

import timm
import torch

import adaptformer
from adaptformer.backbones.hf import wrap_if_hf
from adaptformer.backbones.mlps import HEAD_ATTRIBUTES, MLP_NAME

ROOT = Path(__file__).resolve().parents[1]
#: keywords that shrink a model, tried in order until the constructor accepts one (none fits every family)
SHRINK = (
    {"depth": 2},
    {"depths": (1, 1, 1, 1)},
    {"depths": (1, 1, 1)},
    {"depths": (1, 1)},
    {"layers": (1, 1, 1, 1)},
    {},
)
#: parameters above which a model is built with fewer blocks (a random 1B-parameter model is slow on a CPU)
LARGE = 60_000_000
METHODS = ("lora", "bitfit", "ssf", "vpt")


def tiny_hf(model_type: str):
    """A tiny random Hugging Face model of ``model_type`` (32-64 px, width 32-64, two layers)."""
    import transformers as t

    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32)
    builders = {
        "vit": lambda: t.ViTModel(t.ViTConfig(**vit, patch_size=8)),
        "dinov2": lambda: t.Dinov2Model(t.Dinov2Config(**vit, patch_size=8)),
        "dinov2_with_registers": lambda: t.Dinov2WithRegistersModel(t.Dinov2WithRegistersConfig(**vit, patch_size=8)),
        "dinov3_vit": lambda: t.DINOv3ViTModel(t.DINOv3ViTConfig(**vit, patch_size=8, num_register_tokens=2)),
        "deit": lambda: t.DeiTModel(t.DeiTConfig(**vit, patch_size=8)),
        "beit": lambda: t.BeitModel(t.BeitConfig(**vit, patch_size=8, use_mean_pooling=True)),
        "data2vec-vision": lambda: t.Data2VecVisionModel(t.Data2VecVisionConfig(**vit, patch_size=8)),
        "ijepa": lambda: t.IJepaModel(t.IJepaConfig(**vit, patch_size=8)),
        "vit_msn": lambda: t.ViTMSNModel(t.ViTMSNConfig(**vit, patch_size=8)),
        "vit_mae": lambda: t.ViTMAEModel(t.ViTMAEConfig(**vit, patch_size=8)),
        "clip": lambda: t.CLIPVisionModel(t.CLIPVisionConfig(**vit, patch_size=8)),
        "metaclip_2": lambda: t.MetaClip2VisionModel(t.MetaClip2VisionConfig(**vit, patch_size=8)),
        "mlcd": lambda: t.MLCDVisionModel(t.MLCDVisionConfig(**vit, patch_size=8)),
        "siglip": lambda: t.SiglipVisionModel(t.SiglipVisionConfig(**vit, patch_size=8)),
        "siglip2": lambda: t.Siglip2VisionModel(t.Siglip2VisionConfig(**{**vit, "num_patches": 16}, patch_size=8)),
        "aimv2": lambda: t.Aimv2VisionModel(t.Aimv2VisionConfig(**vit, patch_size=8)),
        "swin": lambda: t.SwinModel(
            t.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)
        ),
        "swinv2": lambda: t.Swinv2Model(
            t.Swinv2Config(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)
        ),
        "hiera": lambda: t.HieraModel(
            t.HieraConfig(
                image_size=[64, 64], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], patch_stride=[4, 4]
            )
        ),
        "pvt_v2": lambda: t.PvtV2Model(
            t.PvtV2Config(
                image_size=64, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2]
            )
        ),
        "videomae": lambda: t.VideoMAEModel(t.VideoMAEConfig(**vit, patch_size=16, num_frames=4, tubelet_size=2)),
        "timesformer": lambda: t.TimesformerModel(t.TimesformerConfig(**vit, patch_size=8, num_frames=2)),
        "vivit": lambda: t.VivitModel(t.VivitConfig(**vit, num_frames=4, tubelet_size=[2, 8, 8])),
    }
    return builders[model_type]()


HF_TYPES = (
    "vit",
    "dinov2",
    "dinov2_with_registers",
    "dinov3_vit",
    "deit",
    "beit",
    "data2vec-vision",
    "ijepa",
    "vit_msn",
    "vit_mae",
    "clip",
    "metaclip_2",
    "mlcd",
    "siglip",
    "siglip2",
    "aimv2",
    "swin",
    "swinv2",
    "hiera",
    "pvt_v2",
    "videomae",
    "timesformer",
    "vivit",
)


class Timeout(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int):
    def expire(signum, frame):
        raise Timeout(f"took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def first_models() -> dict[str, str]:
    prefixes: dict[str, str] = {}
    for name in timm.list_models():
        prefixes.setdefault(name.split("_")[0], name)
    return prefixes


FIRST_MODELS = first_models()


def build_timm(name: str):
    """The model with random weights: as registered; where it is large, with the first shrinking keywords its
    constructor accepts; else built with its parameters on the meta device, every run of blocks of one class and width
    cut to two, and only then given (random) weights."""
    if count(name, {}) <= LARGE:
        return timm.create_model(name, pretrained=False), {}
    for kwargs in SHRINK[:-1]:
        try:
            if count(name, kwargs) <= 8 * LARGE:
                return timm.create_model(name, pretrained=False, **kwargs), kwargs
        except Exception:  # the constructor takes no such keyword, or not with these values
            continue
    return truncated(name), {"blocks": "first two of each run"}


def count(name: str, kwargs: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name, pretrained=False, **kwargs).parameters())


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside get their parameters on the meta device and their buffers as usual (the position
    indices and frequencies a constructor computes stay real)."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, parameter):
        register(module, name, parameter)
        if parameter is not None:
            value = module._parameters[name]
            module._parameters[name] = torch.nn.Parameter(value.to("meta"), requires_grad=value.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def truncated(name: str) -> torch.nn.Module:
    with parameters_on_meta():
        model = timm.create_model(name, pretrained=False)
    for module in list(model.modules()):
        if isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)) and len(module) > 2 and _identical(module):
            for index in range(len(module) - 1, 1, -1):
                del module[index]
    if sum(p.numel() for p in model.parameters()) > 8 * LARGE:
        raise adaptformer.AdaptFormerError(f"{name}: too large to build on this machine even cut to two blocks a run")
    for module in model.modules():
        for key, parameter in list(module._parameters.items()):
            if parameter is not None and parameter.is_meta:
                value = torch.randn(parameter.shape) * 0.02 if parameter.ndim > 1 else torch.ones(parameter.shape)
                module._parameters[key] = torch.nn.Parameter(value, requires_grad=parameter.requires_grad)
    return model


def _identical(modules) -> bool:
    """Blocks of one class and width (their first parameters alike): a run that can be cut without changing
    the widths around it (stages of one class but growing width cannot)."""

    def first(module):
        return next((tuple(p.shape) for p in module.parameters()), None)

    return all(type(m) is type(modules[0]) and first(m) == first(modules[0]) for m in modules)


def mlp_classes(model: torch.nn.Module) -> list[str]:
    """Classes of modules named like an MLP outside the classifier head (what "its blocks hold an MLP" counts)."""
    found = collections.Counter()
    for name, module in model.named_modules():
        if name and not any(part in HEAD_ATTRIBUTES for part in name.split(".")):
            cls = type(module).__name__
            if MLP_NAME.search(cls) or re.search(r"(Intermediate|MLP)$", cls):
                found[cls] += 1
    return sorted(found)


def features(model, x):
    out = model.forward_features(x)
    tensors = out if isinstance(out, (list, tuple)) else [out]
    return [t.float() for t in tensors if isinstance(t, torch.Tensor)]


def check(make, device: str, dtype: torch.dtype) -> dict:
    """Adapt a model from ``make()`` and compare its features with a second, untouched one's."""
    model = adaptformer.adapt(make().to(device=device, dtype=dtype), "adaptformer", num_classes=3, bottleneck=8)
    model.eval()
    spec = model.input_spec()
    shape = (2, 3, spec.frames, spec.size, spec.size) if spec.frames > 1 else (2, 3, spec.size, spec.size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    untouched = wrap_if_hf(make()).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        plain = features(untouched, x)
        adapted = features(model, x)
        same = max((a - b).abs().max().item() for a, b in zip(adapted, plain, strict=True))
        for adapter in model.task.blocks.values():
            adapter["adaptmlp"].up_proj.weight.normal_()
        moved = features(model, x)
        change = max((a - b).abs().max().item() for a, b in zip(moved, plain, strict=True))
    scale = max(p.abs().max().item() for p in plain)
    # unchanged: within 1e-5 of features of size ~1 (relative for larger ones; bf16 has 8 bits of mantissa);
    # moved: by more than a thousandth of the features' size (random-weight models can have tiny activations)
    tolerance = (1e-5 if dtype == torch.float32 else 2e-2) * max(1.0, scale)
    row = dict(
        blocks=model.depth,
        adapter_input=model.anatomy.adapter_input,
        left_out=list(model.anatomy.left_out),
        zero_init_diff=same,
        moved=change,
        family=model.family.name,
    )
    if same > tolerance:
        row["status"], row["reason"] = "crash", f"zero-initialised adapters changed the features by {same:.2e}"
    elif not change > 1e-3 * scale:
        row["status"], row["reason"] = "crash", f"a non-zero Up moved the features by only {change:.2e}"
    else:
        row["status"] = "adapts"
    return row


def other_methods(make) -> dict[str, str]:
    verdicts = {}
    for method in METHODS:
        try:
            adaptformer.adapt(make(), method, num_classes=3)
            verdicts[method] = "yes"
        except adaptformer.AdaptFormerError as error:
            verdicts[method] = "no: " + str(error)
    return verdicts


def census_one(kind: str, key: str, device: str, dtype: torch.dtype, seconds: int) -> dict:
    row = {"kind": kind, "key": key}
    started = time.perf_counter()
    try:
        with deadline(seconds):
            if kind == "timm":
                name = FIRST_MODELS.get(key, key)
                torch.manual_seed(0)
                backbone, shrink = build_timm(name)
                row.update(model=name, cls=type(backbone).__name__, shrink=shrink)

                def make():
                    torch.manual_seed(0)
                    return build_timm(name)[0]
            else:
                torch.manual_seed(0)
                backbone = tiny_hf(key)
                row.update(model=type(backbone).__name__, cls=type(backbone).__name__)

                def make():
                    torch.manual_seed(0)
                    return tiny_hf(key)

            row["mlp_classes"] = mlp_classes(backbone)
            del backbone
            row.update(check(make, device, dtype))
            if row["status"] == "adapts":
                row["methods"] = other_methods(make)
    except adaptformer.AdaptFormerError as error:
        row.update(status="refused", reason=str(error))
    except Timeout as error:
        row.update(status="crash", reason=str(error))
    except Exception as error:  # the census's point: every crash is listed, with where it happened
        where = traceback.extract_tb(error.__traceback__)[-1]
        row.update(
            status="crash", reason=f"{type(error).__name__}: {str(error)[:200]} ({where.filename}:{where.lineno})"
        )
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def write_table(rows: list[dict], path: Path, command: str) -> None:
    timm_rows = [r for r in rows if r["kind"] == "timm"]
    hf_rows = [r for r in rows if r["kind"] == "hf"]
    with_mlp = [r for r in timm_rows if r.get("mlp_classes")]
    counts = collections.Counter(r["status"] for r in timm_rows)
    mlp_counts = collections.Counter(r["status"] for r in with_mlp)
    hf_counts = collections.Counter(r["status"] for r in hf_rows)
    lines = [
        "# Census: every timm prefix and Hugging Face vision class, adapted by its anatomy",
        "",
        f"`{command}` (random weights, tiny configurations where the model is large; see the script's docstring).",
        "",
        f"- timm: {len(timm_rows)} prefixes: {counts['adapts']} adapt, {counts['refused']} refused, "
        f"{counts['crash']} crash.",
        f"- timm prefixes whose first model holds an MLP module outside its head: {len(with_mlp)}: "
        f"{mlp_counts['adapts']} adapt, {mlp_counts['refused']} refused, {mlp_counts['crash']} crash.",
        f"- Hugging Face: {len(hf_rows)} classes: {hf_counts['adapts']} adapt, {hf_counts['refused']} refused, "
        f"{hf_counts['crash']} crash.",
        "",
        "`adapter input`: `residual` where the block's output is exactly x' + m (the paper's placement), `mlp_input` "
        "where the adapter sits beside the MLP module (its input in, its output added to the MLP's). Methods: "
        "L = LoRA, B = BitFit, S = SSF, V = VPT (declared families only).",
        "",
        "| source | model | class | status | blocks | adapter input | methods | MLP classes / reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["kind"] != "hf", r["status"] != "adapts", r["key"])):
        methods = r.get("methods") or {}
        letters = "".join(m[0].upper() for m in METHODS if methods.get(m) == "yes") or "–"
        detail = ", ".join(r.get("mlp_classes") or []) if r["status"] == "adapts" else r.get("reason", "")
        detail = detail.replace("|", "\\|")
        lines.append(
            f"| {r['kind']} | {r.get('model', r['key'])} | {r.get('cls', '')} | {r['status']} | {r.get('blocks', '')} "
            f"| {r.get('adapter_input', '')} | {letters if r['status'] == 'adapts' else ''} | {detail} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="timm prefixes or HF model types (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/census.jsonl"))
    parser.add_argument("--table", type=Path, default=ROOT / "docs/results/census.md")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seconds", type=int, default=300, help="time limit per model")
    parser.add_argument("--no-timm", action="store_true")
    parser.add_argument("--no-hf", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dtype = getattr(torch, args.dtype)
    jobs = [] if args.no_timm else [("timm", p) for p in FIRST_MODELS]
    jobs += [] if args.no_hf else [("hf", t) for t in HF_TYPES]
    if args.only:
        jobs = [(k, key) for k, key in jobs if key in args.only]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done[(row["kind"], row["key"])] = row
    for kind, key in jobs:
        if (kind, key) in done:
            continue
        row = census_one(kind, key, args.device, dtype, args.seconds)
        done[(kind, key)] = row
        with args.out.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(f"{kind:4} {key:24} {row['status']:8} {row.get('seconds', 0):7.2f}s {row.get('reason', '')[:120]}")
        sys.stdout.flush()
    rows = [done[j] for j in jobs if j in done] if args.only else list(done.values())
    command = "python benchmarks/census.py" + (f" --device {args.device}" if args.device != "cpu" else "")
    if not args.only:
        write_table(rows, args.table, command)
    statuses = collections.Counter(r["status"] for r in rows)
    print(f"{len(rows)} models: {dict(statuses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
