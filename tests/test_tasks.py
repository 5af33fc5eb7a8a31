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
    assert meta["classes"] == list("abcde") and meta["method"]["method"] == method
    assert meta["format_version"] == 2 and meta["task"] == "default"
    assert json.loads(path.with_suffix(".json").read_text()) == meta


@pytest.mark.parametrize(
    "method, options",
    [
        ("adaptformer", dict(placement="sequential", layernorm="in", scale="learnable", layers="top:1")),
        ("adaptformer", {}),
        ("vpt", dict(vpt_mode="shallow", vpt_tokens=2)),
        ("vpt", dict(vpt_mode="kv", vpt_tokens=2, layers="top:1")),
        ("linear", {}),
        ("full", {}),
    ],
)
def test_save_then_load_on_a_fresh_backbone_reproduces_outputs(tmp_path, images, method, options):
    model = trained(method, **options)
    path = adaptformer.save_task(model, tmp_path / "t.safetensors")
    restored = adaptformer.apply_task(tiny_vit(), path).eval()
    assert torch.equal(restored(images), model(images))
    assert restored.config == model.config


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
    whole = {**source.backbone.state_dict(), **source.task.state_dict()}  # reference names throughout
    reference_state = {("blocks.0.attn.q_proj.weight" if "qkv.weight" in k else k): v for k, v in whole.items()}
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


def test_version_1_files_still_load(tmp_path, images):
    """A task file written by adaptformer 0.1 (format v1: one mixed config, no task name, no crop) loads."""
    model = trained("adaptformer", bottleneck=4, placement="sequential")
    tensors = model.task_state_dict()
    v1 = {
        "format": "adaptformer.task",
        "format_version": 1,
        "adaptformer_version": "0.1.0",
        "config": {
            "method": "adaptformer",
            "bottleneck": 4,
            "scale": 0.1,
            "layernorm": "none",
            "dropout": 0.1,
            "init": "lora",
            "placement": "sequential",
            "layers": "all",
            "vpt_tokens": 1,
            "vpt_mode": "deep",
            "head_batchnorm": True,
        },
        "num_classes": 5,
        "classes": None,
        "backbone": {
            "name": "vit_tiny_patch16_224",
            "timm_kwargs": {},
            "checkpoint": None,
            "fingerprint": model.backbone_fingerprint(),
            "embed_dim": 32,
            "depth": 2,
            "input_size": [3, 32, 32],
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
        "extra": {"epoch": 3},
    }
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(tmp_path / "old.safetensors"),
        {"adaptformer": json.dumps(v1)},
    )
    restored = adaptformer.apply_task(tiny_vit(), tmp_path / "old.safetensors").eval()
    assert torch.equal(restored(images), model(images))
    assert restored.active_task == "old" and restored.classes == [str(i) for i in range(5)]
    meta, _ = read_task(tmp_path / "old.safetensors")
    assert meta["format_version"] == 2 and meta["upgraded_from"] == 1 and meta["extra"] == {"epoch": 3}
    from adaptformer.tasks import preprocessing_of

    spec = preprocessing_of(meta, restored)
    assert (spec.size, spec.mean, spec.crop_pct) == (32, (0.5, 0.5, 0.5), 0.9)  # crop: the backbone's default


def test_several_tasks_on_one_backbone_round_trip(tmp_path, images):
    """Two task files applied to one fresh backbone reproduce each task's own model."""
    first = trained("adaptformer", bottleneck=4)
    second = trained("vpt", vpt_tokens=2)
    save = adaptformer.save_task
    save(first, tmp_path / "digits.safetensors", task="default")
    save(second, tmp_path / "faces.safetensors")
    meta, _ = read_task(tmp_path / "faces.safetensors")
    meta["task"] = "faces"
    _, tensors = read_task(tmp_path / "faces.safetensors")
    from adaptformer.tasks.format import write_task

    write_task(tmp_path / "faces.safetensors", meta, tensors)
    model = adaptformer.apply_task(tiny_vit(), tmp_path / "digits.safetensors", name="digits")
    model = adaptformer.apply_task(model, tmp_path / "faces.safetensors")
    assert list(model.tasks) == ["digits", "faces"] and model.active_task == "faces"
    model.eval()
    assert torch.equal(model(images, task="digits"), first(images))
    assert torch.equal(model(images, task="faces"), second(images))
    model.remove_task("faces")
    assert list(model.tasks) == ["digits"] and model.active_task == "digits"
