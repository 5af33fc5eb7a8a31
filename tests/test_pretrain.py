"""`adaptformer pretrain`: trains, exports timm-format weights every epoch, resumes exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer import pretrain as pretrain_module
from adaptformer.cli import main
from adaptformer.pretrain import PretrainConfig, augment, pretrain
from formats import write_imagefolder

TINY = dict(
    img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, batch_size=8, warmup_epochs=1, precision="fp32"
)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "cifar"
    write_imagefolder(root, classes=("a", "b"), per_class=12, size=16, split_folders=True)
    (root / "val").rename(root / "test")
    return root


def test_pretrain_exports_weights_timm_can_load(tmp_path, data):
    card = pretrain(PretrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=2, **TINY))
    assert card["epochs_done"] == 2 and 0 <= card["test_top1"] <= 1
    weights = tmp_path / "run" / "model.safetensors"
    assert "blocks.0.attn.qkv.weight" in load_file(str(weights))
    model = adaptformer.create_backbone(
        "vit_tiny_patch16_224",
        checkpoint=weights,
        num_classes=2,
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=1,
        num_heads=2,
    )
    assert torch.equal(model.state_dict()["pos_embed"], load_file(str(weights))["pos_embed"])
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_pretrain_resumes_exactly(tmp_path, data, monkeypatch):
    straight = pretrain(PretrainConfig(data=str(data), out=str(tmp_path / "a"), epochs=2, **TINY))
    real = pretrain_module.export_weights

    def die_after_first_epoch(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_module, "export_weights", die_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain(PretrainConfig(data=str(data), out=str(tmp_path / "b"), epochs=2, **TINY))
    monkeypatch.undo()
    with pytest.raises(AdaptFormerError, match="already holds a run.*--resume"):
        pretrain(PretrainConfig(data=str(data), out=str(tmp_path / "b"), epochs=2, **TINY))
    resumed = pretrain(PretrainConfig(data=str(data), out=str(tmp_path / "b"), epochs=2, resume=True, **TINY))
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_top1"] == straight["test_top1"]


def test_pretrain_refuses_to_resume_other_settings(tmp_path, data, capsys):
    pretrain(PretrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, **TINY))
    args = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--lr", "0.5", "--resume"]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(args) == 2
    assert "other settings (lr: 0.001 -> 0.5)" in capsys.readouterr().err
    assert main([*args[: -1 - len(TINY)], "--overwrite", *args[-len(TINY) :]]) == 0  # --overwrite starts afresh


def test_pretrain_bad_data_root(tmp_path, capsys):
    assert main(["pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_augment_keeps_shape_and_content():
    batch = torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8)
    out = augment(batch, torch.Generator().manual_seed(0), pad=0)
    assert all(torch.equal(out[i], batch[i].float()) or torch.equal(out[i], batch[i].float().flip(2)) for i in range(6))
    assert augment(batch, torch.Generator().manual_seed(0)).shape == (6, 3, 8, 8)


def test_cli_prints_card(tmp_path, data, capsys):
    args = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1"]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs_done"] == 1
