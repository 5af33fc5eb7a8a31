"""Task files: exact contents, round trip, and refusals."""

import json

import pytest
import timm
import torch

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.tasks import read_task
from conftest import tiny_vit


def trained(method="adaptformer", seed=0, **options):
    model = adaptformer.adapt(tiny_vit(seed=seed), method, **options)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
        model.head[0].running_mean.normal_(generator=generator)
    return model.eval()


@pytest.mark.parametrize(
    "method, expected",
    [
        (
            "adaptformer",
            {
                f"blocks.{i}.adaptmlp.{p}.{t}"
                for i in range(2)
                for p in ("down_proj", "up_proj")
                for t in ("weight", "bias")
            },
        ),
        ("vpt", {"embeddings.0", "embeddings.1"}),
        ("linear", set()),
    ],
)
def test_task_file_holds_exactly_the_tuned_keys(tmp_path, method, expected):
    path = adaptformer.save_task(trained(method), tmp_path / "task.safetensors", classes=list("abcde"))
    meta, tensors = read_task(path)
    head = {"head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked", "head.1.weight", "head.1.bias"}
    assert set(tensors) == expected | head
    assert meta["classes"] == list("abcde") and meta["config"]["method"] == method
    assert json.loads(path.with_suffix(".json").read_text()) == meta


@pytest.mark.parametrize(
    "method, options",
    [
        ("adaptformer", dict(placement="sequential", layernorm="in", scale="learnable", layers="top:1")),
        ("adaptformer", {}),
        ("vpt", dict(vpt_mode="shallow", vpt_tokens=2)),
        ("linear", {}),
        ("full", {}),
    ],
)
def test_save_then_load_on_a_fresh_backbone_reproduces_outputs(tmp_path, images, method, options):
    model = trained(method, **options)
    path = adaptformer.save_task(model, tmp_path / "t.safetensors")
    restored = adaptformer.apply_task(tiny_vit(), path).eval()
    assert torch.equal(restored(images), model(images))
    assert restored.adaptformer_config == model.adaptformer_config


def test_load_refuses_other_backbone_weights(tmp_path):
    path = adaptformer.save_task(trained(), tmp_path / "t.safetensors")
    with pytest.raises(AdaptFormerError, match="other backbone weights"):
        adaptformer.apply_task(tiny_vit(seed=1), path)
    assert adaptformer.apply_task(tiny_vit(seed=1), path, check_backbone=False).num_classes == 5


def test_load_refuses_other_architecture(tmp_path):
    path = adaptformer.save_task(trained(), tmp_path / "t.safetensors")
    with pytest.raises(AdaptFormerError, match="width 32, depth 2"):
        adaptformer.apply_task(tiny_vit(depth=3), path)


def test_load_refuses_other_method(tmp_path):
    path = adaptformer.save_task(trained("vpt"), tmp_path / "t.safetensors")
    other = adaptformer.adapt(tiny_vit(), "adaptformer")
    with pytest.raises(AdaptFormerError, match="trained with method vpt"):
        adaptformer.apply_task(other, path)


def test_corrupt_and_foreign_files_fail_clearly(tmp_path):
    path = adaptformer.save_task(trained(), tmp_path / "t.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdaptFormerError, match="cut.safetensors"):
        adaptformer.apply_task(tiny_vit(), tmp_path / "cut.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(AdaptFormerError, match="no adaptformer metadata"):
        adaptformer.apply_task(tiny_vit(), tmp_path / "plain.safetensors")
    with pytest.raises(AdaptFormerError, match="no such file"):
        adaptformer.apply_task(tiny_vit(), tmp_path / "missing.safetensors")


def test_tampered_tensors_fail_strict_key_check(tmp_path):
    model = trained()
    path = adaptformer.save_task(model, tmp_path / "t.safetensors")
    meta, tensors = read_task(path)
    del tensors["blocks.1.adaptmlp.up_proj.bias"]
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"adaptformer": json.dumps(meta)})
    with pytest.raises(AdaptFormerError, match="missing.*blocks.1.adaptmlp.up_proj.bias"):
        adaptformer.apply_task(tiny_vit(), tmp_path / "bad.safetensors")


def test_import_reference_checkpoint_keeps_only_tunable_keys(tmp_path, images):
    source = trained()
    # the reference saves the whole model (its own backbone names), plus training state
    reference_state = {
        ("blocks.0.attn.q_proj.weight" if "qkv.weight" in k else k): v for k, v in source.state_dict().items()
    }
    torch.save({"model": reference_state, "epoch": 99}, tmp_path / "checkpoint-99.pth")
    target = adaptformer.adapt(tiny_vit(), "adaptformer")
    loaded = adaptformer.import_reference_checkpoint(target, tmp_path / "checkpoint-99.pth")
    assert all(".adaptmlp." in k or k.startswith("head.") for k in loaded)
    assert len(loaded) == 8 + 5
    assert torch.equal(target.eval()(images), source(images))


def test_vit_b_cifar100_task_file_is_small(tmp_path):
    model = adaptformer.adapt(timm.create_model("vit_base_patch16_224", num_classes=100), "adaptformer")
    path = adaptformer.save_task(model, tmp_path / "cifar100.safetensors")
    assert path.stat().st_size < 6 * 1024 * 1024
