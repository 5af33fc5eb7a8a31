"""Task repositories in the Hugging Face Hub layout: ``adaptformer push TASK --repo user/name``, and
``hf:user/name[@revision]`` wherever a task file is accepted.

A task's folder (``write_task_folder``; ``save_task(..., folder=True)`` writes the same):

- ``task.safetensors``: the task file itself (adapters, prompts, head; the backbone is named, not included);
- ``config.json``: what the file records, readable without reading it: method and its options, backbone with its
  fingerprint, classes, objective, preprocessing, the library's version;
- ``README.md``: a model card: the method and its paper, the backbone and fingerprint, classes, the metrics of
  the run it came from (``summary.json`` beside the file), the preprocessing, the command that trains it again
  (with ``training.yaml``, the run's ``config.yaml``, when it is there) and a usage snippet.

Pushing is ``huggingface_hub``'s ``upload_folder``; resolving ``hf:`` is its ``snapshot_download`` (its cache,
``HF_HUB_OFFLINE=1`` honoured: only what the cache holds)."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import AdaptFormerError, first_line
from ..utils.atomic import atomic_write_json, atomic_write_text
from ..utils.extras import require
from ..version import __version__
from .format import method_config_of, read_task_file

PREFIX = "hf:"
TASK_FILE, CONFIG_FILE, CARD_FILE, TRAINING_FILE = "task.safetensors", "config.json", "README.md", "training.yaml"
FOLDER_FILES = [TASK_FILE, CONFIG_FILE, CARD_FILE, TRAINING_FILE]


def is_hub_task(text: str) -> bool:
    return str(text).startswith(PREFIX)


def parse_hub_task(text: str) -> tuple[str, str | None]:
    """``hf:user/name[@revision]`` as (repo id, revision)."""
    repo, _, revision = str(text)[len(PREFIX) :].partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise AdaptFormerError(f"--task {text!r}: expected hf:USER/NAME or hf:USER/NAME@REVISION")
    return repo, revision or None


def local_task_file(text: str | Path) -> Path:
    """The task file for ``text``: a local path as it is, or ``hf:user/name[@revision]`` from the Hub's cache
    (downloaded first unless ``HF_HUB_OFFLINE=1``)."""
    if not is_hub_task(str(text)):
        return Path(text)
    return _from_hub(str(text))


@functools.lru_cache(maxsize=256)
def _from_hub(text: str) -> Path:
    """Resolved once per process: listing a bank reads the first task's header and then adds it, and both must
    see the same snapshot without asking the Hub twice (a failure is not cached: a later call tries again)."""
    repo, revision = parse_hub_task(text)
    hub = require("huggingface_hub", f"--task {text}")
    try:
        folder = hub.snapshot_download(repo_id=repo, revision=revision, allow_patterns=FOLDER_FILES)
    except Exception as error:  # noqa: BLE001 - offline and not cached, no such repo or revision, no network
        raise AdaptFormerError(
            f"--task {text}: cannot get it from the Hugging Face Hub ({first_line(error, 200)})"
        ) from None
    path = Path(folder) / TASK_FILE
    if not path.is_file():
        raise AdaptFormerError(f"--task {text}: the repository holds no {TASK_FILE} (not a task repository?)")
    return path


def write_task_folder(
    task: str | Path, out: str | Path, run_dir: str | Path | None = None, repo: str | None = None
) -> Path:
    """The task file ``task`` as a repository folder in ``out`` (see the module docstring); ``run_dir``: where
    ``summary.json`` and ``config.yaml`` are (default: beside the file); ``repo``: named in the card's snippet."""
    task, out = Path(task), Path(out)
    header, _ = read_task_file(task)  # checked before anything is written
    meta = header.meta
    config = method_config_of(meta, task)
    run = Path(run_dir) if run_dir is not None else task.parent
    summary = _summary(run / "summary.json")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / TASK_FILE).exists() or not (out / TASK_FILE).samefile(task):
        shutil.copyfile(task, out / TASK_FILE)
    training = run / "config.yaml"
    if training.is_file():
        atomic_write_text(out / TRAINING_FILE, _shareable_training(training))
    backbone = meta.get("backbone") or {}
    record = {
        "library_name": "adaptformer",
        "adaptformer_version": __version__,
        "task": task.stem,
        "method": config.name,
        "method_options": config.to_dict(),
        "backbone": {k: backbone.get(k) for k in ("name", "fingerprint", "kwargs", "checkpoint") if k in backbone},
        "classes": list(meta.get("classes") or []),
        "objective": meta.get("objective", "classification"),
        "preprocessing": meta.get("preprocessing") or {},
        **({"metrics": summary} if summary else {}),
    }
    atomic_write_json(out / CONFIG_FILE, record)
    atomic_write_text(out / CARD_FILE, model_card(record, config, training.is_file(), repo or "USER/NAME"))
    return out


def push_task(
    task: str | Path,
    repo: str,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    message: str | None = None,
) -> str:
    """Upload ``task``'s folder to the Hub repository ``repo`` (created when missing); returns the commit URL."""
    parse_hub_task(f"{PREFIX}{repo}")  # the same rule as pulling
    hub = require("huggingface_hub", "adaptformer push")
    with tempfile.TemporaryDirectory(prefix="adaptformer-push-") as folder:
        write_task_folder(task, folder, repo=repo)
        try:
            api = hub.HfApi(token=token)
            api.create_repo(repo, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo, folder_path=folder, revision=revision,
                commit_message=message or f"adaptformer task {Path(task).stem}",
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - no token, no network, no right to the repository
            raise AdaptFormerError(f"push {repo}: {first_line(error, 200)}") from None
    return str(getattr(commit, "commit_url", commit))


def _shareable_training(path: Path) -> str:
    """The run's config with its local paths cut to their last part (a pushed repository does not tell the
    layout of the machine it trained on), said in a comment at the top."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    for key in ("data_root", "out", "checkpoint", "train_list", "test_list", "label_map"):
        if isinstance(data.get(key), str):
            data[key] = Path(data[key]).name
    note = "# the run that trained this task; paths cut to their last part: point them at your copies\n"
    return note + yaml.safe_dump(data, sort_keys=False)


def _summary(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # a card without metrics rather than no card
    keep = ("dataset", "metric", "top1", "top5", "mAP", "best_top1", "best_mAP", "evaluated_on", "epochs",
            "trainable", "total", "trainable_percent", "train_seconds")  # fmt: skip
    return {k: data[k] for k in keep if k in data} if isinstance(data, dict) else {}


def model_card(record: dict[str, Any], method, has_training: bool, repo: str) -> str:
    """The README.md of a task repository (``method``: the task's method config)."""
    backbone = record["backbone"]
    metrics = record.get("metrics") or {}
    classes = record["classes"]
    shown = ", ".join(map(str, classes[:20])) + (f", … ({len(classes)} in all)" if len(classes) > 20 else "")
    lines = [
        "---",
        "library_name: adaptformer",
        "tags:",
        *dict.fromkeys(["- adaptformer", f"- {record['method']}"]),
        "- image-classification" if record["preprocessing"].get("frames", 1) == 1 else "- video-classification",
        "---",
        "",
        f"# {record['task']}",
        "",
        f"An [adaptformer](https://github.com/adaptformer/adaptformer) task: **{method.title()}** "
        f"({method.reference}) on the frozen backbone `{backbone.get('name')}`. This repository holds only the "
        "task (adapters, prompts and head); the backbone's weights are loaded from where its name says.",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{record['method']}` |",
        f"| backbone | `{backbone.get('name')}` (fingerprint `{backbone.get('fingerprint')}`) |",
        f"| objective | {record['objective']} |",
        f"| classes | {len(classes)}: {shown} |",
    ]
    if metrics:
        metric = metrics.get("metric", "top1")
        value = metrics.get(metric)
        lines.append(
            f"| {metric} | {value:.2f} on {metrics.get('dataset')} ({metrics.get('evaluated_on')}) |"
            if isinstance(value, int | float) else f"| metrics | {json.dumps(metrics)} |"
        )  # fmt: skip
        if "trainable" in metrics:
            lines.append(f"| trainable | {metrics['trainable']:,} parameters ({metrics.get('trainable_percent')} %) |")
    pre = record["preprocessing"]
    lines += [
        f"| preprocessing | size {pre.get('input_size')}, mean {pre.get('mean')}, std {pre.get('std')}, crop "
        f"{pre.get('crop_pct')}, {pre.get('interpolation')}, resize mode {pre.get('resize_mode', 'crop')}"
        + (f", {pre.get('frames')} frames" if pre.get("frames", 1) > 1 else "")
        + " |",
        "",
        "## Use",
        "",
        "```bash",
        "pip install adaptformer",
        f"adaptformer predict --task hf:{repo} photo.jpg",
        "```",
        "",
        "```python",
        "import adaptformer",
        "",
        f'path = adaptformer.tasks.hub.local_task_file("hf:{repo}")',
        "model = adaptformer.load_task(path)",
        "```",
        "",
    ]
    if has_training:
        lines += ["## Train it again", "", "```bash", f"adaptformer train --config {TRAINING_FILE}", "```", ""]
    return "\n".join(lines)
