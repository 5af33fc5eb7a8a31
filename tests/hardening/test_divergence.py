"""A NaN/inf loss or weight stops training with a message naming the step and epoch and a lower learning rate,
and leaves the last good checkpoint and task files as they were."""

import pytest
import torch

import adaptformer
from adaptformer import AdaptFormerError, objectives
from adaptformer.runtime.state import load_training_state
from adaptformer.train.loop import fit
from training_helpers import tiny_train_config


def test_nan_loss_stops_naming_step_and_epoch_and_keeps_the_last_good_files(tmp_path, monkeypatch):
    fit(tiny_train_config(tmp_path, epochs=1, out=str(tmp_path / "one")))  # the state after epoch 1, for reference
    real, calls = objectives.F.cross_entropy, {"n": 0}

    def nan_from_the_fifth_loss(*args, **kwargs):  # 3 steps + 1 test batch per epoch: the 5th loss is step 4, epoch 2
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 5 else loss

    monkeypatch.setattr(objectives.F, "cross_entropy", nan_from_the_fifth_loss)
    with pytest.raises(AdaptFormerError) as error:
        fit(tiny_train_config(tmp_path, epochs=3))
    message = str(error.value)
    assert "loss is nan at step 4 (epoch 2)" in message and "--lr 0.005" in message and "\n" not in message
    run, one = tmp_path / "run", tmp_path / "one"
    assert (run / "last.safetensors").read_bytes() == (one / "last.safetensors").read_bytes()
    kept, reference = load_training_state(run / "checkpoint.pt"), load_training_state(one / "checkpoint.pt")
    assert kept["progress"]["epoch"] == 1
    assert all(torch.equal(kept["tuned"][k], v) for k, v in reference["tuned"].items())
    monkeypatch.undo()
    assert fit(tiny_train_config(tmp_path, epochs=3, resume=True))["epochs"] == 3  # the kept state resumes


def test_an_exploding_learning_rate_never_saves_non_finite_weights(tmp_path):
    with pytest.raises(AdaptFormerError, match=r"training diverged: .* at step \d+ \(epoch \d+\).*lower learning"):
        fit(tiny_train_config(tmp_path, epochs=3, lr=1e12, checkpoint_every_steps=1, head_batchnorm=False))
    for name in ("last.safetensors", "best.safetensors"):
        if (tmp_path / "run" / name).exists():  # every file written loads: non-finite tensors would be refused
            adaptformer.load_task(tmp_path / "run" / name, pretrained=False, check_backbone=False)
    state = load_training_state(tmp_path / "run" / "checkpoint.pt")
    assert all(bool(torch.isfinite(v).all()) for v in state["tuned"].values() if v.is_floating_point())
