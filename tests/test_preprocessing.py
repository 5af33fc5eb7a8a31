"""Task files record the preprocessing used in training, and eval/predict use it."""

import json

from adaptformer.cli import main
from adaptformer.runtime.metrics import read_metrics
from adaptformer.tasks import read_task
from adaptformer.train.loop import fit
from training_helpers import tiny_train_config


def test_eval_of_best_task_reproduces_the_logged_top1(tmp_path, capsys):
    # timm's default crop for vit_tiny_patch16_224 is 0.9; the run asks for 0.875 (Resize 37 + CenterCrop 32)
    cfg = tiny_train_config(tmp_path, epochs=3, crop_pct=0.875, lr=0.1, interpolation="bilinear")
    fit(cfg)
    run = tmp_path / "run"
    meta, _ = read_task(run / "best.safetensors")
    pre = meta["preprocessing"]
    assert (pre["crop_pct"], pre["resize"], pre["interpolation"], pre["input_size"]) == (
        0.875,
        37,
        "bilinear",
        [3, 32, 32],
    )
    epochs = {r["epoch"]: r for r in read_metrics(run / "metrics.jsonl") if "test_top1" in r}
    logged = epochs[meta["extra"]["epoch"]]["test_top1"]
    args = ["eval", "--task", str(run / "best.safetensors"), "--checkpoint", cfg.checkpoint, "--dataset"]
    args += ["imagefolder", "--data-root", cfg.data_root, "--workers", "0", "--precision", "fp32", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["top1"] == logged and result["samples"] == 6


def test_cached_features_train_the_linear_probe_like_the_full_forward(tmp_path):
    """Same steps in the same order on the same (un-augmented) features: the same head."""
    common = dict(method="linear", augment=False, epochs=2, lr=0.1)
    plain = fit(tiny_train_config(tmp_path / "plain", **common))
    cached = fit(tiny_train_config(tmp_path / "cached", cache_features=True, **common))
    from adaptformer.runtime.state import load_training_state

    a = load_training_state(tmp_path / "plain" / "run" / "checkpoint.pt")["tuned"]
    b = load_training_state(tmp_path / "cached" / "run" / "checkpoint.pt")["tuned"]
    for key in a:
        if a[key].is_floating_point():
            assert (a[key] - b[key]).abs().max() < 1e-4, key
    assert cached["top1"] == plain["top1"]
