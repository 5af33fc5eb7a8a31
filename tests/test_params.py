"""Parameter counts on ViT-B/16 equal the paper's (docs/method.md), through the API and the CLI."""

import json

import pytest
import timm

import adaptformer
from adaptformer.cli import main


@pytest.fixture(scope="module")
def vit_b_counts():
    counts = {}
    for method, options in [("adaptformer", {}), ("linear", {}), ("vpt", dict(vpt_tokens=1)), ("full", {})]:
        model = adaptformer.adapt(timm.create_model("vit_base_patch16_224", num_classes=100), method, **options)
        counts[method] = adaptformer.parameter_report(model)
    return counts


def test_adaptformer_64_on_vit_b_cifar100(vit_b_counts):
    report = vit_b_counts["adaptformer"]
    assert report.adapters == 1_189_632 == 12 * 99_136
    assert report.head == 76_900
    assert report.trainable == 1_266_532
    assert report.frozen == 85_798_656


def test_baselines_on_vit_b(vit_b_counts):
    assert vit_b_counts["linear"].trainable == 76_900
    assert vit_b_counts["vpt"].prompts == 9_216 and vit_b_counts["vpt"].trainable == 9_216 + 76_900
    assert vit_b_counts["full"].trainable == vit_b_counts["full"].total == 85_798_656 + 76_900


def test_params_command_json(capsys):
    code = main(
        [
            "params",
            "--model",
            "vit_base_patch16_224",
            "--method",
            "adaptformer",
            "--bottleneck",
            "64",
            "--num-classes",
            "100",
            "--no-pretrained",
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["total"], report["trainable"]) == (87_065_188, 1_266_532)
    assert report["percent"] == pytest.approx(1.4547, abs=1e-4)


def test_params_command_needs_no_weights(capsys):
    # no --no-pretrained: counting must still not try to download anything
    assert main(["params", "--model", "vit_small_patch16_224", "--num-classes", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["adapters"] == 12 * (2 * 384 * 64 + 384 + 64)


def test_params_command_table_and_errors(capsys):
    assert (
        main(
            [
                "params",
                "--model",
                "vit_small_patch16_224",
                "--method",
                "linear",
                "--num-classes",
                "10",
                "--no-pretrained",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "trainable" in out and "3,850" in out  # 384 * 10 + 10
    assert main(["params", "--model", "vit_small_patch16_224", "--num-classes", "10"]) == 0
    assert "adaptformer" in capsys.readouterr().out  # the default method is named in the table
    assert main(["params", "--model", "not_a_model", "--no-pretrained"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'not_a_model'") and err.count("\n") == 1
