"""The adapted model compiles with torch.compile in one graph (no graph break) and matches eager execution."""

import copy

import pytest
import torch
import torch.nn.functional as F

import adaptformer
from conftest import perturb_task, tiny_vit


def randomize(model):
    return perturb_task(model, 0.2)


@pytest.mark.parametrize(
    "method, options",
    [
        ("adaptformer", dict(placement="parallel", layers="top:1")),
        ("adaptformer", dict(placement="sequential", layernorm="in", scale="learnable")),
        ("vpt", dict(vpt_tokens=2, vpt_mode="deep")),
        ("vpt", dict(vpt_tokens=2, vpt_mode="kv")),
        ("linear", {}),
        ("lora", dict(lora_targets=("qkv", "mlp"), layers="top:1")),
        ("bitfit", {}),
        ("ssf", {}),
    ],
)
def test_no_graph_break(method, options, images):
    torch._dynamo.reset()
    model = adaptformer.adapt(tiny_vit(), method, **options).eval()
    explanation = torch._dynamo.explain(model)(images)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_compiled_model_matches_eager_in_inference_and_training(images):
    torch._dynamo.reset()
    model = randomize(adaptformer.adapt(tiny_vit(), "adaptformer", bottleneck=4, dropout=0.0))
    model.add_task("second", "adaptformer", 5, bottleneck=2, placement="sequential", activate=False)
    model.eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images), rtol=1e-4, atol=1e-5)
        model.set_task("second")  # switching tasks re-specialises the compiled graph
        torch.testing.assert_close(compiled(images), model(images), rtol=1e-4, atol=1e-5)
    model.set_task("default")
    # a training step: the same gradients for the adapters and the head
    labels = torch.tensor([0, 1, 2, 3])
    eager = copy.deepcopy(model).train()
    model.train()
    F.cross_entropy(torch.compile(model, backend="aot_eager")(images), labels).backward()
    F.cross_entropy(eager(images), labels).backward()
    for (name, p), q in zip(model.task.named_parameters(), eager.task.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_training_with_compile_matches_eager_training(tmp_path):
    """`train --compile`: the same run directory and, up to float noise, the same weights as eager training."""
    from adaptformer.runtime.state import load_training_state
    from adaptformer.train.loop import fit
    from training_helpers import tiny_train_config

    torch._dynamo.reset()
    common = dict(epochs=1, augment=False, dropout=0.0)
    eager = fit(tiny_train_config(tmp_path / "eager", **common))
    compiled = fit(tiny_train_config(tmp_path / "compiled", compile=True, **common))
    a = load_training_state(tmp_path / "eager" / "run" / "checkpoint.pt")["tuned"]
    b = load_training_state(tmp_path / "compiled" / "run" / "checkpoint.pt")["tuned"]
    for key in a:
        torch.testing.assert_close(b[key].float(), a[key].float(), rtol=1e-3, atol=1e-5, msg=key)
    assert compiled["top1"] == eager["top1"] and (tmp_path / "compiled" / "run" / "best.safetensors").exists()
