"""SIGKILL at random moments (before an atomic write, or halfway through one), resume, repeat: the result equals
an uninterrupted run, for image training, video training, ``pretrain`` and a sweep. Deterministic CPU settings
(fp32, no workers, fixed seeds) make "equal" exact."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from adaptformer.cli import main
from adaptformer.runtime.metrics import read_metrics
from adaptformer.runtime.state import load_training_state
from formats import write_hmdb51, write_imagefolder
from training_helpers import tiny_train_values

DRIVER = Path(__file__).with_name("kill_driver.py")
CLOCKS = {"time", "train_seconds", "elapsed", "run_dir", "peak_memory_mb"}  # measured, not computed


def killed_then_resumed(args: list[str], seed: int, kills: int, resume_flag: list[str]) -> list[str]:
    """Run ``args`` under the kill driver ``kills`` times (each resumed), then to the end; the moments chosen."""
    rng = random.Random(seed)
    moments = []
    for attempt in range(kills + 1):
        command = [sys.executable, str(DRIVER), "0", "before", *args, *(resume_flag if attempt else [])]
        if attempt < kills:
            command[2:4] = [str(rng.randint(2, 7)), rng.choice(["before", "during"])]
            moments.append(" ".join(command[2:4]))
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if attempt < kills and done.returncode == -9:
            continue
        assert done.returncode == 0, done.stderr[-2000:]
        if attempt < kills:  # it finished before the chosen write: later attempts resume a finished run
            moments.append("finished first")
    return moments


def without_clocks(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in CLOCKS} for r in records]


def assert_same_training(a: Path, b: Path) -> None:
    state_a, state_b = load_training_state(a / "checkpoint.pt"), load_training_state(b / "checkpoint.pt")
    for key, value in state_a["tuned"].items():
        assert torch.equal(value, state_b["tuned"][key]), key
    assert without_clocks(read_metrics(a / "metrics.jsonl")) == without_clocks(read_metrics(b / "metrics.jsonl"))
    summary_a, summary_b = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert without_clocks([summary_a]) == without_clocks([summary_b])
    assert not list(b.glob(".*.tmp")), "a torn temporary file was left behind"


def config_file(tmp_path: Path, **values) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("seed", [0, 1])
def test_image_training_killed_at_random_moments(tmp_path, seed):
    values = tiny_train_values(tmp_path, epochs=3, checkpoint_every_steps=1, tensorboard=False)
    config = config_file(tmp_path, **values)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "straight")]) == 0
    moments = killed_then_resumed(
        ["train", "--config", str(config), "--out", str(tmp_path / "killed")], seed, 3, ["--resume"]
    )
    assert moments.count("finished first") < 3, moments
    assert_same_training(tmp_path / "straight", tmp_path / "killed")


def test_video_training_killed_and_resumed(tmp_path):
    data = write_hmdb51(tmp_path / "hmdb", per_class=4)
    values = tiny_train_values(tmp_path, dataset="hmdb51", data_root=str(data), num_frames=2, tensorboard=False)
    values.update(epochs=2, batch_size=2, effective_batch=2, checkpoint_every_steps=1)
    config = config_file(tmp_path, **values)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "straight")]) == 0
    killed_then_resumed(["train", "--config", str(config), "--out", str(tmp_path / "killed")], 2, 2, ["--resume"])
    assert_same_training(tmp_path / "straight", tmp_path / "killed")


def test_pretrain_killed_and_resumed(tmp_path):
    data = tmp_path / "cifar"
    write_imagefolder(data, classes=("a", "b"), per_class=12, size=16, split_folders=True)
    (data / "val").rename(data / "test")
    tiny = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, batch_size=8, precision="fp32")
    common = ["pretrain", "--data", str(data), "--epochs", "3", "--warmup-epochs", "1"]
    common += [f"--{k.replace('_', '-')}={v}" for k, v in tiny.items()]
    assert main([*common, "--out", str(tmp_path / "straight")]) == 0
    killed_then_resumed([*common, "--out", str(tmp_path / "killed")], 3, 2, ["--resume"])
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [without_clocks(read_metrics(tmp_path / d / "metrics.jsonl")) for d in ("straight", "killed")]
    assert metrics[0] == metrics[1]


def test_sweep_killed_and_rerun(tmp_path):
    values = tiny_train_values(tmp_path, epochs=2, tensorboard=False, checkpoint_every_steps=1)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": values, "grid": {"bottleneck": [2, 4]}}))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "straight")]) == 0
    killed_then_resumed(["sweep", str(sweep), "--out", str(tmp_path / "killed")], 4, 3, [])
    for run in ("bottleneck=2", "bottleneck=4"):
        assert_same_training(tmp_path / "straight" / run, tmp_path / "killed" / run)
