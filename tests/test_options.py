"""Command-line options come from typed dataclass fields: any supported type, help from one place."""

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from adaptformer import AdaptFormerError
from adaptformer.cli import build_parser
from adaptformer.cli.options import add_dataclass_options, given
from adaptformer.methods.registry import method_option_fields, registered_methods
from adaptformer.train.config import TrainConfig, load_config_file, split_flat
from adaptformer.utils.options import option


@dataclass
class Example:
    blocks: list[int] = option(None, "block indices")
    mode: Literal["a", "b"] = option("a", "one of two")
    size: int | None = option(None, "a size")
    ratio: float | str = option(0.5, "a number or a word")
    enabled: bool = option(True, "a switch")
    extra: dict | None = option(None, "JSON")


def parse(argv):
    parser = argparse.ArgumentParser()
    names = add_dataclass_options(parser, Example)
    return given(parser.parse_args(argv), names), parser


def test_every_supported_type_parses():
    values, _ = parse(["--blocks", "0,3,5", "--mode", "b", "--size", "none", "--ratio", "learnable", "--no-enabled"])
    assert values == {"blocks": (0, 3, 5), "mode": "b", "ratio": "learnable", "enabled": False}
    values, _ = parse(["--blocks", "[1, 2]", "--size", "7", "--ratio", "0.25", "--extra", '{"k": 1}'])
    assert values == {"blocks": (1, 2), "size": 7, "ratio": 0.25, "extra": {"k": 1}}


@pytest.mark.parametrize("argv", [["--mode", "c"], ["--size", "big"], ["--blocks", "a,b"], ["--extra", "[1]"]])
def test_bad_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_help_text_comes_from_the_field(capsys):
    _, parser = parse([])
    text = parser.format_help()
    assert "block indices" in text and "one of two" in text and "(default: a)" in text


def test_train_and_params_expose_every_method_and_training_option():
    parser = build_parser()
    actions = {
        name: {a.dest for a in sub._actions}
        for name, sub in parser._subparsers._group_actions[0].choices.items()
        if name in ("train", "params")
    }
    method_options = set(method_option_fields())
    assert method_options <= actions["train"] and method_options <= actions["params"]
    assert {f for f in TrainConfig.__dataclass_fields__ if f != "method_config"} <= actions["train"]
    # no method option shadows a training option
    assert not method_options & set(TrainConfig.__dataclass_fields__)
    assert set(registered_methods()) == {
        *("adaptformer", "linear", "vpt", "lora", "bitfit", "ssf", "full"),  # the paper's and the usual baselines
        *("lntune", "dora", "repadapter", "fact-tt", "fact-tk", "houlsby", "pfeiffer", "adapterplus", "convpass"),
    }


def test_flat_keys_are_sorted_and_strangers_named(tmp_path):
    fields, options = split_flat({"method": "vpt", "epochs": 3, "vpt_tokens": 4}, "test")
    assert fields == {"method": "vpt", "epochs": 3} and options == {"vpt_tokens": 4}
    with pytest.raises(AdaptFormerError, match="bottleneck is an option of adaptformer, not of method vpt"):
        split_flat({"method": "vpt", "bottleneck": 4}, "test")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(AdaptFormerError, match=r"unknown option\(s\) epochz \(valid: .*epochs"):
        load_config_file(str(bad))


def test_config_yaml_round_trips_every_method_option(tmp_path):
    import yaml

    cfg = TrainConfig.from_flat(
        {"method": "adaptformer", "bottleneck": 8, "layers": [0, 1], "epochs": 2, "warmup_epochs": 1}
    )
    flat = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    assert flat["bottleneck"] == 8 and flat["placement"] == "parallel" and flat["layers"] == [0, 1]
    again = TrainConfig.from_flat(flat)
    assert again.method_config == cfg.method_config and again.to_dict() == cfg.to_dict()
