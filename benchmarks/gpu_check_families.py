"""Issue 17's GPU check: the family conformance checks on CUDA, one line per family (CI has no GPU).

    PYTHONPATH=src python benchmarks/gpu_check_families.py      # then the speed rows, see gpu_check_families.sh

For every family of ``tests/backbones/test_families.py`` (tiny random configurations): a zero-initialised
AdaptFormer task leaves the pooled features unchanged; a mixed batch of AdaptFormer, LoRA (where the family has
a fused qkv), BitFit and linear tasks equals each task alone; one bf16-autocast training step gives gradients
to the task only; ``torch._dynamo.explain`` finds no graph break. Prints ``ok`` or the first failure per family.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backbones"))

from test_families import FAMILIES, NO_QKV, inputs, make, plain_features  # noqa: E402

import adaptformer  # noqa: E402


def check(name: str, device: torch.device) -> str:
    x = inputs(name, 4).to(device)
    model = adaptformer.adapt(make(name).to(device), "adaptformer", num_classes=3, task="a", bottleneck=4).eval()
    with torch.no_grad():
        reference = plain_features(make(name).to(device), x)
        error = (model.pooled_features(x) - reference).abs().max().item()
    if error > 1e-4:
        return f"zero-init changed the features by {error:.2e}"
    model.add_task("b", "bitfit" if name in NO_QKV else "lora", classes=4)
    model.add_task("c", "linear", classes=2)
    model.add_task("d", "bitfit", classes=2)
    for parameter in model.tasks.parameters():
        parameter.data.normal_(0, 0.05)
    names = list(model.tasks)
    with torch.no_grad():
        for row, task in zip(model(x[: len(names)], tasks=names), names, strict=True):
            alone = model(x[names.index(task) : names.index(task) + 1], task=task)[0]
            if not torch.allclose(row, alone, atol=1e-4):
                return f"mixed batch differs from task {task} alone"
    model.set_task("a")
    model.train()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0], device=device))
    loss.backward()
    own = {id(p) for p in model.task.parameters()}
    if any(p.grad is not None for p in model.backbone.parameters() if id(p) not in own):
        return "a backbone weight got a gradient"
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.eval())(x)
    if explanation.graph_break_count:
        return f"{explanation.graph_break_count} graph breaks: {explanation.break_reasons[0].reason}"
    return "ok"


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "no GPU"
    print(f"device {device} ({gpu}), torch {torch.__version__}")
    failures = 0
    for name in FAMILIES:
        start = time.perf_counter()
        try:
            result = check(name, device)
        except Exception as error:  # report every family, then fail
            result = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        failures += result != "ok"
        print(f"{name:36s} {result}  ({time.perf_counter() - start:.1f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
