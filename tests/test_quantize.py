"""``--quantize int8``: the frozen backbone's Linear layers in int8 (PyTorch's dynamic quantization) while every
task's adapters, prompts, sites and head stay as trained; mixed-task batches equal each task alone on the int8
backbone; the fingerprint stays that of the float weights, so foreign weights are still refused."""

import json

import pytest
import torch

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.bank import TaskBank
from adaptformer.cli import main
from adaptformer.train.loop import fit
from conftest import perturb_task
from formats import write_imagefolder
from training_helpers import TINY_KWARGS, tiny_checkpoint, tiny_train_config

# not VPT: its prompt slots join every sample of a mixed batch (masked out of attention for the others), and a
# sample's activation scale then covers them too: int8 rounding moves its answer slightly (README: --quantize)
METHODS = ["adaptformer", "lora", "ssf", "bitfit", "convpass", "linear"]


def tiny_model(tmp_path):
    model = adaptformer.create_model(
        "vit_tiny_patch16_224", "adaptformer", num_classes=3, checkpoint=tiny_checkpoint(tmp_path),
        timm_kwargs=TINY_KWARGS, task="adaptformer",
    )  # fmt: skip
    for method in METHODS[1:]:
        model.add_task(method, method, classes=3, activate=False)
    for seed, name in enumerate(METHODS):  # off the zero initialisation, so every task changes the features
        perturb_task(model, 0.05, seed=seed, task=name)
    return model.eval()


def test_an_int8_backbone_serves_every_task_and_mixed_batches_equal_each_task_alone(tmp_path):
    model = tiny_model(tmp_path)
    x = torch.randn(len(METHODS), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        float_logits = {name: model(x, task=name) for name in METHODS}
    model.enable_any_input_size()  # as the task store does: tasks trained at other sizes share the backbone
    fingerprint, at_48 = model.backbone_fingerprint(), model.backbone_fingerprint_at(48)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.backbone.modules())
    assert model.quantize_backbone("int8") == linears > 0
    assert not any(isinstance(m, torch.nn.Linear) for m in model.backbone.modules())  # all of them int8 now
    assert all(
        isinstance(m.up_proj, torch.nn.Linear) for m in model.tasks["adaptformer"].modules() if hasattr(m, "up_proj")
    )  # fmt: skip - the tasks' own layers stay float
    assert model.backbone_fingerprint() == fingerprint
    assert model.backbone_fingerprint_at(48) == at_48  # taken over the float weights the layers keep
    with torch.no_grad():
        alone = {name: model(x, task=name) for name in METHODS}
        mixed = model(x, tasks=METHODS)  # sample i through task i, one pass of the int8 backbone
    for i, name in enumerate(METHODS):
        assert torch.allclose(mixed[i], alone[name][i], atol=1e-5), name
        scale = float_logits[name].abs().max()
        assert (alone[name] - float_logits[name]).abs().max() < 0.1 * scale, name  # int8 is close to float
        assert not torch.equal(alone[name], float_logits[name]), name  # and it is the int8 path that ran


def test_full_fine_tuning_and_cuda_are_refused_in_one_line(tmp_path):
    model = adaptformer.create_model(
        "vit_tiny_patch16_224", "full", num_classes=3, checkpoint=tiny_checkpoint(tmp_path), timm_kwargs=TINY_KWARGS
    )
    with pytest.raises(AdaptFormerError, match="full fine-tuning task trains the backbone; it cannot be quantized"):
        model.quantize_backbone("int8")
    with pytest.raises(AdaptFormerError, match="--quantize 'int4': expected int8"):
        model.quantize_backbone("int4")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    fit(tiny_train_config(root, out=str(root / "run"), epochs=1, tensorboard=False, method="lora"))
    other = root / "other.safetensors"  # trained on other backbone weights
    torch.manual_seed(5)
    foreign = adaptformer.create_model(
        "vit_tiny_patch16_224", "lora", num_classes=3, pretrained=False, timm_kwargs=TINY_KWARGS
    )
    adaptformer.save_task(foreign, other)
    images = write_imagefolder(root / "images", classes=("x",), per_class=3) / "x"
    return root / "run" / "last.safetensors", other, images, tiny_checkpoint(root)


def test_the_bank_and_the_cli_serve_on_int8_and_still_refuse_foreign_weights(trained, capsys):
    task, other, images, checkpoint = trained
    bank = TaskBank.open([str(task)], checkpoint=str(checkpoint), device="cpu", quantize="int8")
    assert bank.precision == "fp32" and bank.model.quantized == "int8"
    from fastapi.testclient import TestClient

    from adaptformer.serve.app import create_app

    with TestClient(create_app(bank), base_url="http://localhost") as client:
        health = client.get("/health").json()
        assert health["quantized"] == "int8" and health["task_precision"] == "auto"
    with pytest.raises(AdaptFormerError, match="backbone"):
        bank.add(str(other))  # the fingerprint is of the float weights: these are not them
    arguments = ["predict", "--task", str(task), "--checkpoint", str(checkpoint), "--json", str(images)]
    assert main([*arguments, "--quantize", "int8"]) == 0
    int8 = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*arguments, "--precision", "fp32"]) == 0
    float32 = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(int8) == len(float32) == 3
    for a, b in zip(int8, float32, strict=True):
        assert a["top_k"][0]["label"] == b["top_k"][0]["label"]
        assert abs(a["top_k"][0]["prob"] - b["top_k"][0]["prob"]) < 0.05
    assert main([*arguments, "--quantize", "int8", "--task-precision", "int8"]) == 0  # both int8: close again
    both = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for a, b in zip(both, float32, strict=True):
        assert a["top_k"][0]["label"] == b["top_k"][0]["label"]
        assert abs(a["top_k"][0]["prob"] - b["top_k"][0]["prob"]) < 0.05
    assert main([*arguments, "--quantize", "int8", "--precision", "bf16"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: --quantize int8 runs fp32 around the int8 layers; drop --precision bf16"
    )


@pytest.mark.parametrize("amx", [True, False])
def test_the_int8_kernels_follow_the_cpu_and_give_the_same_answers(amx, monkeypatch):
    from adaptformer.adapted.int8 import Int8Linear, int8_engine

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    expected = "onednn" if amx and "onednn" in torch.backends.quantized.supported_engines else "fbgemm"
    assert int8_engine() == expected
    linear = torch.nn.Linear(64, 96)
    before = torch.backends.quantized.engine
    engines = [e for e in ("fbgemm", "onednn") if e in torch.backends.quantized.supported_engines]
    layers = {engine: Int8Linear(linear, engine) for engine in engines}
    assert torch.backends.quantized.engine == before  # the process-wide setting is only borrowed for packing
    x = torch.randn(4, 10, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = {engine: layer(x) for engine, layer in layers.items()}
        reference = linear(x)
    first = out[engines[0]]
    for engine in engines:
        assert f"int8 ({engine})" in repr(layers[engine])
        assert torch.allclose(out[engine], first, atol=1e-5)  # the same scales and rounding
        assert not torch.equal(out[engine], reference)  # int8, not the float layer
        assert (out[engine] - reference).abs().max() < 0.05 * reference.abs().max()
