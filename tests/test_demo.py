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


def test_video_demo_runs_on_inflated_embedded_backbone(tmp_path, capsys):
    out = tmp_path / "video"
    assert main(["demo", "--video", "--out", str(out), "--epochs", "1", "--methods", "linear,adaptformer"]) == 0
    assert "AdaptFormer" in capsys.readouterr().out and "moving-digits" in (out / "report.md").read_text()
    from adaptformer.tasks import read_task

    meta, _ = read_task(out / "runs" / "adaptformer" / "best.safetensors")
    assert meta["preprocessing"]["frames"] == 4 and meta["classes"] == ["still", "horizontal", "vertical", "diagonal"]


def test_moving_digits_frames_carry_no_label_but_motion_does():
    import numpy as np

    from adaptformer.data.registry import build_split

    split = build_split("moving-digits", None, True, num_frames=4)
    positions = {label: [] for label in range(4)}
    for index in range(200):
        (clip,), label = split.dataset[index]
        assert clip.shape == (4, 16, 16, 3)
        moved = [not np.array_equal(clip[0], clip[t]) for t in range(1, 4)]
        assert all(moved) == (label != 0)  # only "still" clips repeat their first frame
        ys, xs = np.nonzero(clip[0, :, :, 0] > 0)
        positions[label].append((ys.mean(), xs.mean()) if len(ys) else (7.5, 7.5))
    centres = np.array([np.mean(positions[label], axis=0) for label in range(4)])
    assert np.ptp(centres, axis=0).max() < 3.0  # no class sits elsewhere in the frame on average
