"""`adaptformer demo` on the embedded backbone (shortened to one epoch here)."""

from adaptformer.backbones.embedded import VIT_TINY_CIFAR10
from adaptformer.cli import main


def test_embedded_backbone_ships_with_its_card():
    assert VIT_TINY_CIFAR10.weights_path().is_file()
    assert VIT_TINY_CIFAR10.weights_path().stat().st_size < 12 * 1024 * 1024
    card = VIT_TINY_CIFAR10.card()
    assert card["timm_kwargs"]["embed_dim"] == 192 and "recipe" in card


def test_demo_writes_table_report_and_plot(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--methods", "linear,adaptformer"]) == 0
    printed = capsys.readouterr().out
    assert "Linear probe" in printed and "AdaptFormer" in printed and "top-1" in printed
    report = (out / "report.md").read_text()
    assert "accuracy_vs_params.png" in report and "lr=0.4" in report
    assert (out / "accuracy_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "adaptformer" / "best.safetensors").exists()
