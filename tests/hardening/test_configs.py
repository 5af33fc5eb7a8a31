"""Bad values in YAML files, sweep files and flags are refused before any work starts, naming the key."""

import pytest
import yaml

from adaptformer.cli import main

BAD_VALUES = {
    "epochs": ("ten", "--epochs: expected an integer >= 1"),
    "lr": (-1, "--lr: expected a number"),
    "blr": (0, "--blr: expected a number"),
    "momentum": (2, "--momentum: expected a number in [0.0, 1.0]"),
    "weight_decay": (-0.1, "--weight-decay"),
    "label_smoothing": (1.5, "--label-smoothing"),
    "min_lr": (-1, "--min-lr"),
    "hflip": (2, "--hflip: expected a number in [0.0, 1.0]"),
    "img_size": (-5, "--img-size: expected an integer >= 1"),
    "model_kwargs": (5, "--model-kwargs: expected a mapping"),
    "precision": ("fp8", "--precision: expected one of auto, fp32, bf16, fp16"),
    "bottleneck": (-3, "bottleneck: expected an integer >= 1"),
    "scale": ("huge", "scale"),
    "validation_split": (2, "--validation-split"),
    "epochz": (3, "unknown option(s) epochz (valid: adapter_bottleneck, adapter_drop_path, adapter_dropout, augment"),
}


@pytest.mark.parametrize("key", list(BAD_VALUES))
def test_bad_yaml_values_are_refused_before_any_work(tmp_path, capsys, key):
    value, message = BAD_VALUES[key]
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"dataset": "digits", key: value}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["lr", "momentum", "epochz"])
def test_bad_sweep_values_are_refused_before_any_run(tmp_path, capsys, key):
    value, message = BAD_VALUES[key]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": {"dataset": "digits"}, "grid": {key: [value]}}))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_bad_flags_are_refused(tmp_path, capsys):
    assert main(["train", "--dataset", "digits", "--lr", "-1", "--out", str(tmp_path / "run")]) == 2
    assert "--lr: expected a number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: an unknown flag or a non-number
        main(["train", "--dataset", "digits", "--epochs", "ten"])
    assert exit_info.value.code == 2 and "argument --epochs: expected int, got 'ten'" in capsys.readouterr().err
