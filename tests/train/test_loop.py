"""Training end to end on a tiny ViT: outputs, resume exactness, refusals, skipped images."""

import json

import pytest
import torch

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.runtime.metrics import read_metrics
from adaptformer.runtime.state import load_training_state
from adaptformer.tasks import read_task
from adaptformer.train import loop
from adaptformer.train.loop import fit
from training_helpers import tiny_train_config


def test_fit_writes_a_complete_run_directory(tmp_path):
    cfg = tiny_train_config(tmp_path, epochs=2)
    summary = fit(cfg)
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "checkpoint.pt",
        "metrics.jsonl",
        "train.log",
        "summary.json",
        "best.safetensors",
        "best.json",
        "last.safetensors",
        "last.json",
    ):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").iterdir())
    epochs = [r for r in read_metrics(run / "metrics.jsonl") if "test_top1" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 <= r["test_top1"] <= r["test_top5"] <= 100 for r in epochs)
    assert summary["epochs"] == 2 and summary["trainable"] > 0
    meta, _ = read_task(run / "last.safetensors")
    assert meta["classes"] == ["blue", "green", "red"] and meta["extra"]["epoch"] == 2
    assert meta["backbone"]["kwargs"]["embed_dim"] == 32 and meta["task"] == "imagefolder"
    assert "imagefolder" in (run / "config.yaml").read_text()


def test_adaptformer_learns_a_separable_task(tmp_path):
    summary = fit(tiny_train_config(tmp_path, epochs=6, lr=0.2, augment=False))
    assert summary["best_top1"] == 100.0


def test_saved_task_reloads_onto_the_same_backbone_only(tmp_path):
    cfg = tiny_train_config(tmp_path, epochs=1)
    fit(cfg)
    path = tmp_path / "run" / "last.safetensors"
    model = adaptformer.load_task(path, checkpoint=cfg.checkpoint)
    assert model.num_classes == 3 and model.task.adapter(0).down_proj.in_features == 32
    with pytest.raises(AdaptFormerError, match="other backbone weights .vit_tiny_patch16_224 from tiny_vit"):
        adaptformer.load_task(path, pretrained=False)


class Killed(Exception):
    pass


def _kill_after(monkeypatch, calls: int):
    """Simulate a kill right after the ``calls``-th checkpoint write."""
    real = loop.save_training_state
    count = {"n": 0}

    def save_then_maybe_die(*args, **kwargs):
        real(*args, **kwargs)
        count["n"] += 1
        if count["n"] == calls:
            raise Killed

    monkeypatch.setattr(loop, "save_training_state", save_then_maybe_die)


@pytest.mark.parametrize("kill_at, every", [(1, 0), (5, 1)])  # after epoch 1; mid-epoch 2 (step checkpoints)
def test_resume_continues_exactly(tmp_path, monkeypatch, kill_at, every):
    straight = fit(tiny_train_config(tmp_path / "a", checkpoint_every_steps=every))
    _kill_after(monkeypatch, kill_at)
    with pytest.raises(Killed):
        fit(tiny_train_config(tmp_path / "b", checkpoint_every_steps=every))
    monkeypatch.undo()
    state = load_training_state(tmp_path / "b" / "run" / "checkpoint.pt")
    assert state["progress"]["global_step"] < 3 * 3
    resumed = fit(tiny_train_config(tmp_path / "b", checkpoint_every_steps=every, resume=True))
    a = load_training_state(tmp_path / "a" / "run" / "checkpoint.pt")
    b = load_training_state(tmp_path / "b" / "run" / "checkpoint.pt")
    for key, value in a["tuned"].items():
        assert torch.equal(value, b["tuned"][key]), key
    assert resumed["top1"] == straight["top1"]
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


def test_existing_run_is_protected(tmp_path):
    fit(tiny_train_config(tmp_path, epochs=1))
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    with pytest.raises(AdaptFormerError, match="already holds a run.*--resume.*--overwrite"):
        fit(tiny_train_config(tmp_path, epochs=1))
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before
    fit(tiny_train_config(tmp_path, epochs=1, overwrite=True, seed=1))
    assert (tmp_path / "run" / "last.safetensors").read_bytes() != before


def test_a_run_refused_before_it_began_can_be_run_again_without_overwrite(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdaptFormerError, match="no class sub-folders"):
        fit(tiny_train_config(tmp_path, epochs=1, data_root=str(empty)))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["train.log"]  # all it left
    assert fit(tiny_train_config(tmp_path, epochs=1))["epochs"] == 1  # the same --out, data fixed


def test_resume_refuses_changed_settings(tmp_path):
    fit(tiny_train_config(tmp_path, epochs=1))
    with pytest.raises(AdaptFormerError, match="other settings.*bottleneck"):
        fit(tiny_train_config(tmp_path, epochs=1, bottleneck=8, resume=True))


def test_unreadable_images_are_skipped_counted_and_logged(tmp_path):
    cfg = tiny_train_config(tmp_path, epochs=1)
    broken = tmp_path / "data" / "red" / "000.png"
    broken.write_bytes(b"this is not a png")
    summary = fit(cfg)
    assert summary["skipped_images"] >= 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "skipped unreadable file" in log and "000.png" in log


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    common = dict(epochs=1, head_batchnorm=False, augment=False, dropout=0.0, warmup_epochs=0)
    fit(tiny_train_config(tmp_path / "big", batch_size=8, effective_batch=8, **common))
    fit(tiny_train_config(tmp_path / "acc", batch_size=4, effective_batch=8, **common))
    big = load_training_state(tmp_path / "big" / "run" / "checkpoint.pt")["tuned"]
    acc = load_training_state(tmp_path / "acc" / "run" / "checkpoint.pt")["tuned"]
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-4, atol=1e-6)


def test_a_checkpointed_run_trains_the_same_tensors_as_a_plain_one(tmp_path):
    """--grad-checkpointing recomputes the blocks (and the adapters inside them) in the backward pass: one epoch
    ends at the same weights (dropout off: the recomputed pass draws the same masks anyway)."""
    common = dict(epochs=1, augment=False, warmup_epochs=0)
    fit(tiny_train_config(tmp_path / "plain", **common))
    fit(tiny_train_config(tmp_path / "recomputed", grad_checkpointing=True, **common))
    plain = load_training_state(tmp_path / "plain" / "run" / "checkpoint.pt")["tuned"]
    recomputed = load_training_state(tmp_path / "recomputed" / "run" / "checkpoint.pt")["tuned"]
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in plain.items() if "up_proj" in k)
    for key in plain:
        torch.testing.assert_close(recomputed[key], plain[key], rtol=1e-4, atol=1e-6)


def test_batch_plan_errors(tmp_path):
    with pytest.raises(AdaptFormerError, match="not a multiple"):
        fit(tiny_train_config(tmp_path, batch_size=3, effective_batch=8))
    with pytest.raises(AdaptFormerError, match="only 24 images"):
        fit(tiny_train_config(tmp_path, batch_size=8, effective_batch=32, overwrite=True))


def test_summary_is_json(tmp_path):
    fit(tiny_train_config(tmp_path, epochs=1))
    data = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert data["method"] == "adaptformer" and data["effective_batch"] == 8


def test_resume_accepts_changed_run_control_options(tmp_path):
    fit(tiny_train_config(tmp_path, epochs=1))
    summary = fit(tiny_train_config(tmp_path, epochs=1, resume=True, tensorboard=False, eval_every=5))
    assert summary["epochs"] == 1


def test_warmup_defaults_to_a_fifth_of_the_epochs(tmp_path):
    """A short run typed without --warmup-epochs trains (a fixed 20 refused --epochs 3); the share is the paper's."""
    config = tiny_train_config(tmp_path, epochs=5, warmup_epochs=None)
    assert config.warmup == 1.0 and loop.plan_steps(config, 24, 1).warmup_steps == 3  # 3 steps an epoch
    assert fit(config)["epochs"] == 5
    assert tiny_train_config(tmp_path, epochs=5, warmup_epochs=0).warmup == 0
    with pytest.raises(AdaptFormerError, match=r"--warmup-epochs: expected a number in \[0, 5\]"):
        tiny_train_config(tmp_path, epochs=5, warmup_epochs=6).validate()


def test_progress_is_written_as_lines_when_not_on_a_terminal(tmp_path, capsys, monkeypatch):
    """Off a terminal (a log file, CI) a bar writes whole lines, one every LOG_INTERVAL_S of a bar that lasts that
    long, never a \r update per step; what finished is logged as its own line."""
    import time

    from adaptformer.utils import progress

    fit(tiny_train_config(tmp_path, epochs=2, batch_size=2, effective_batch=2, max_train_samples=24))
    err = capsys.readouterr().err
    assert "\r" not in err and "step/s" not in err  # short epochs: no bar lines at all
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("epoch ")] == ["epoch 1", "epoch 2"]
    for _ in progress.progress_bar(range(100_000), desc="many"):
        pass
    assert capsys.readouterr().err == ""  # 100,000 quick updates: nothing
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.05)
    for _ in progress.progress_bar(range(4), desc="slow"):
        time.sleep(0.06)
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 5 and all(line.startswith("slow:") for line in lines) and "4/4" in lines[-1]
