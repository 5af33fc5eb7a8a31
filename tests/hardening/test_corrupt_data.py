"""Datasets with a few corrupt files train to the end (the files listed in the log and counted in the summary);
a dataset where nothing can be read fails fast, naming a file and why."""

import json

import pytest

from adaptformer.cli import main
from adaptformer.train.loop import fit
from formats import write_hmdb51, write_imagefolder
from training_helpers import tiny_train_config, tiny_train_values

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def corrupt_images(folder) -> list[str]:
    """Four kinds of corrupt file among 80 images (5 %): truncated, empty, not an image under an image name,
    and a valid PNG header followed by garbage."""
    files = sorted(folder.rglob("*.png"))
    damage = {
        files[1]: files[1].read_bytes()[:60],
        files[22]: b"",
        files[43]: b"GIF89a? no, just text in a file named .png",
        files[64]: PNG_SIGNATURE + bytes(range(256)) * 4,
    }
    for path, content in damage.items():
        path.write_bytes(content)
    return [str(p) for p in damage]


def test_five_percent_corrupt_images_train_to_the_end(tmp_path):
    write_imagefolder(tmp_path / "data", classes=("red", "green", "blue", "grey"), per_class=20)
    broken = corrupt_images(tmp_path / "data")
    summary = fit(tiny_train_config(tmp_path, epochs=2, batch_size=16, effective_batch=16))
    assert summary["epochs"] == 2 and summary["top1"] is not None
    log = (tmp_path / "run" / "train.log").read_text()
    in_training = [path for path in broken if path in summary["skipped_files"]]
    assert in_training and summary["skipped_images"] >= 2 * len(in_training)  # every epoch meets them again
    assert all(path in log for path in in_training)
    assert set(summary["skipped_files"]) <= set(broken)


def test_corrupt_videos_train_to_the_end(tmp_path, capsys):
    data = write_hmdb51(tmp_path / "hmdb", per_class=5)
    truncated = data / "brush_hair" / "brush_hair_clip_0.avi"
    truncated.write_bytes(truncated.read_bytes()[:300])
    (data / "cartwheel" / "cartwheel_clip_1.avi").write_bytes(b"")
    values = tiny_train_values(tmp_path, dataset="hmdb51", data_root=str(data), num_frames=2, img_size=32)
    values.update(epochs=1, batch_size=2, effective_batch=2, out=str(tmp_path / "run"))
    summary = fit(tiny_train_config(tmp_path, **values))
    assert summary["epochs"] == 1 and summary["skipped_images"] >= 1
    assert set(summary["skipped_files"]) <= {str(truncated), str(data / "cartwheel" / "cartwheel_clip_1.avi")}


@pytest.mark.parametrize("kind", ["images", "videos"])
def test_a_dataset_with_nothing_readable_fails_fast(tmp_path, capsys, kind):
    if kind == "images":
        data = write_imagefolder(tmp_path / "data", classes=("a", "b"), per_class=10)
        for path in data.rglob("*.png"):
            path.write_bytes(b"")
        extra = ["--dataset", "imagefolder"]
    else:
        data = write_hmdb51(tmp_path / "hmdb", per_class=3)
        for path in data.rglob("*.avi"):
            path.write_bytes(b"not a video")
        extra = ["--dataset", "hmdb51", "--num-frames", "2"]
    config = tmp_path / "tiny.yaml"
    values = tiny_train_values(tmp_path, data_root=str(data), out=str(tmp_path / "run"))
    config.write_text(json.dumps({k: v for k, v in values.items() if k != "dataset"}))
    assert main(["train", "--config", str(config), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "(training split): none of the" in err and "files tried could be read (first:" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
