"""Task repositories in the Hugging Face Hub layout: the folder ``push`` uploads (and ``save_task(folder=True)``
writes), and ``--task hf:USER/NAME[@REVISION]`` resolved through a cache laid out as huggingface_hub lays it out
(checked with huggingface_hub's own ``scan_cache_dir``), offline, since nothing here may reach the Hub."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.cli import main
from adaptformer.tasks.hub import local_task_file
from adaptformer.train.loop import fit
from formats import write_imagefolder
from training_helpers import tiny_checkpoint, tiny_train_config

huggingface_hub = pytest.importorskip("huggingface_hub")


def into_cache(cache: Path, repo: str, folder: Path, revision: str = "main") -> str:
    """``folder`` as a commit of ``repo`` in a Hub cache: blobs by content hash, the commit's snapshot of links
    to them, and ``refs/<revision>`` naming the commit (what ``hf_hub_download`` leaves behind)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    commit = hashlib.sha1(b"".join(p.read_bytes() for p in files) + revision.encode()).hexdigest()
    for file in files:
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return commit


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    out = root / "run"
    fit(tiny_train_config(root, out=str(out), epochs=1, tensorboard=False, method="adaptformer"))
    images = write_imagefolder(root / "images", classes=("x",), per_class=3) / "x"
    return out, images, ["--checkpoint", str(tiny_checkpoint(root))]


def answers(arguments, capsys):
    assert main(["predict", *arguments, "--json", "--precision", "fp32"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_pushed_task_comes_back_through_the_cache_and_answers_as_its_file(run, offline_cache, monkeypatch, capsys):
    out, images, weights = run
    uploads = []

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None, **kwargs):
        uploads.append((repo_id, revision, commit_message, sorted(p.name for p in Path(folder_path).iterdir())))
        into_cache(offline_cache, repo_id, Path(folder_path), revision or "main")  # what a later download leaves
        url = f"https://huggingface.co/{repo_id}/commit/1"
        return huggingface_hub.CommitInfo(commit_url=url, commit_message="", commit_description="", oid="1")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kwargs: repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert main(["push", str(out / "last.safetensors"), "--repo", "someone/tiny"]) == 0
    assert "use it with: adaptformer predict --task hf:someone/tiny" in capsys.readouterr().out
    (repo, revision, message, files) = uploads[0]
    assert repo == "someone/tiny" and revision is None and message == "adaptformer task last"
    assert files == ["README.md", "config.json", "task.safetensors", "training.yaml"]

    scanned = huggingface_hub.scan_cache_dir(offline_cache)  # huggingface_hub reads the layout as its own
    assert [r.repo_id for r in scanned.repos] == ["someone/tiny"] and not scanned.warnings
    snapshot = next(iter(next(iter(scanned.repos)).revisions)).snapshot_path
    card = (snapshot / "README.md").read_text()
    config = json.loads((snapshot / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert config["backbone"]["fingerprint"] in card and config["method"] == "adaptformer"
    assert f"| top1 | {summary['top1']:.2f} on imagefolder (test) |" in card
    assert "adaptformer predict --task hf:someone/tiny" in card and "adaptformer train --config training.yaml" in card
    training = yaml.safe_load((snapshot / "training.yaml").read_text())
    assert training["data_root"] == "data" and training["method"] == "adaptformer"  # no local paths pushed

    downloads = []
    snapshot_download = huggingface_hub.snapshot_download
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda **kw: downloads.append(kw) or snapshot_download(**kw)
    )
    from_hub = answers(["--task", "hf:someone/tiny", *weights, str(images)], capsys)
    from_file = answers(["--task", str(out / "last.safetensors"), *weights, str(images)], capsys)
    assert [r["top_k"] for r in from_hub] == [r["top_k"] for r in from_file] and len(from_hub) == 3
    assert {r["task"] for r in from_hub} == {"tiny"}  # named by the repository
    data = out.parent / "data"  # the run's own image folder
    assert main(["eval", "--task", "hf:someone/tiny", *weights, "--dataset", "imagefolder", "--data-root",
                 str(data), "--json", "--workers", "0"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["task"] == "hf:someone/tiny"
    assert len(downloads) == 1  # listed, added, predicted and evaluated from one resolution


def test_save_task_folder_writes_the_same_layout_and_a_revision_is_pinned(tmp_path, offline_cache, capsys):
    from training_helpers import TINY_KWARGS

    model = adaptformer.create_model(
        "vit_tiny_patch16_224", "lora", num_classes=3, checkpoint=tiny_checkpoint(tmp_path), timm_kwargs=TINY_KWARGS
    )
    written = adaptformer.save_task(model, tmp_path / "folder", folder=True)
    assert written == tmp_path / "folder" / "task.safetensors"
    assert {"README.md", "config.json", "task.safetensors"} <= {p.name for p in (tmp_path / "folder").iterdir()}
    into_cache(offline_cache, "someone/lora", tmp_path / "folder", revision="v1")
    path = local_task_file("hf:someone/lora@v1")
    assert path.read_bytes() == written.read_bytes()
    loaded = adaptformer.load_task(path, checkpoint=tiny_checkpoint(tmp_path))
    assert loaded.task.config.name == "lora"


def test_hub_tasks_that_cannot_be_had_are_one_line(tmp_path, offline_cache, capsys):
    with pytest.raises(AdaptFormerError, match=r"expected hf:USER/NAME or hf:USER/NAME@REVISION"):
        local_task_file("hf:justaname")
    with pytest.raises(AdaptFormerError) as absent:
        local_task_file("hf:someone/absent")
    assert str(absent.value).startswith("--task hf:someone/absent: cannot get it from the Hugging Face Hub (")
    assert "\n" not in str(absent.value)
    folder = tmp_path / "not-a-task"
    folder.mkdir()
    (folder / "README.md").write_text("# a model, not a task\n")
    into_cache(offline_cache, "someone/model", folder)
    assert main(["export", "hf:someone/model", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --task hf:someone/model: the repository holds no task.safetensors (not a task repository?)"
    )
    shutil.rmtree(folder)
