"""Multi-label tasks as a user runs them: train on the generic csv layout, mAP in summary.json equal to
scikit-learn on the task's own predictions, the objective recorded in task files, ``eval``, ``predict``
with a threshold, mixed batches with a single-label task (bank and the real server), refusals."""

import io
import json
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

sys.path.insert(0, str(Path(__file__).parent / "serve"))
from launch import start_server, stop_server  # noqa: E402

import adaptformer  # noqa: E402
from adaptformer import AdaptFormerError  # noqa: E402
from adaptformer.bank import TaskBank  # noqa: E402
from adaptformer.cli import main  # noqa: E402
from adaptformer.data.registry import build_split  # noqa: E402
from adaptformer.data.transforms import eval_transform  # noqa: E402
from adaptformer.tasks.format import read_task_file  # noqa: E402
from adaptformer.train.loop import fit  # noqa: E402
from formats import write_multilabel  # noqa: E402
from training_helpers import tiny_train_config  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    data = write_multilabel(root / "ml")
    common = dict(epochs=4, lr=0.1, augment=False, effective_batch=8)
    tagged = fit(tiny_train_config(root, dataset="multilabel", data_root=str(data), out=str(root / "tags"), **common))
    colour = fit(tiny_train_config(root, out=str(root / "colour"), **common))  # single-label imagefolder
    return root, data, tagged, colour


def test_training_reports_map_equal_to_scikit_learn_on_the_tasks_predictions(runs):
    root, data, summary, _ = runs
    assert summary["objective"] == "multilabel" and summary["metric"] == "mAP" and "top1" not in summary
    assert summary["best_mAP"] >= summary["mAP"] and len(summary["per_class_ap"]) == 3
    model = adaptformer.load_task(root / "tags" / "last.safetensors", checkpoint=root / "tiny_vit.safetensors")
    model.eval()
    split = build_split(
        "multilabel",
        data,
        False,
        eval_transform(
            adaptformer.tasks.preprocessing_of(read_task_file(root / "tags" / "last.safetensors")[0].meta, model)
        ),
    )
    inputs = torch.stack([split.dataset[i][0] for i in range(len(split.dataset))])
    targets = np.stack([split.dataset[i][1].numpy() for i in range(len(split.dataset))])
    with torch.no_grad():
        probs = model(inputs).sigmoid().numpy()
    expected = np.mean([average_precision_score(targets[:, c], probs[:, c]) for c in range(3)])
    assert summary["mAP"] == pytest.approx(100 * expected, abs=1e-3)
    assert summary["mAP"] > 60  # the colour channels are learnable; chance is about 50 (half the images hold each)
    meta = read_task_file(root / "tags" / "best.safetensors")[0].meta
    assert meta["objective"] == "multilabel" and meta["extra"]["mAP"] == summary["best_mAP"]
    records = [json.loads(line) for line in (root / "tags" / "metrics.jsonl").read_text().splitlines()]
    assert any("test_mAP" in r for r in records)  # plottable, like test_top1


def test_eval_and_predict_cli_answer_with_the_labels_above_the_threshold(runs, capsys):
    root, data, summary, _ = runs
    task, checkpoint = str(root / "tags" / "last.safetensors"), str(root / "tiny_vit.safetensors")

    def run_eval(dataset: str, data_root) -> int:
        return main(
            [
                "eval",
                "--task",
                task,
                "--checkpoint",
                checkpoint,
                "--dataset",
                dataset,
                "--data-root",
                str(data_root),
                "--json",
                "--workers",
                "0",
            ]
        )

    assert run_eval("multilabel", data) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mAP"] == pytest.approx(summary["mAP"], abs=1e-4)
    image = data / "photos" / "test_006.png"  # red, green and blue
    assert main(["predict", "--task", task, "--checkpoint", checkpoint, str(image), "--json", "--threshold", "0"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [t["label"] for t in answer["labels"]] != [] and len(answer["labels"]) == 3  # threshold 0: every class
    assert main(["predict", "--task", task, "--checkpoint", checkpoint, str(image), "--threshold", "1"]) == 0
    assert "(no label >= 1)" in capsys.readouterr().out
    assert main(["predict", "--task", task, "--checkpoint", checkpoint, str(image), "--threshold", "2"]) == 2
    assert "--threshold: expected a probability in [0, 1], got 2.0" in capsys.readouterr().err
    assert run_eval("imagefolder", root / "data") == 2
    assert "a classification dataset, the task is multilabel" in capsys.readouterr().err


def test_a_mixed_batch_with_a_single_label_task_equals_each_task_alone(runs):
    root, data, _, _ = runs
    checkpoint = str(root / "tiny_vit.safetensors")
    files = [f"tags={root / 'tags' / 'last.safetensors'}", f"colour={root / 'colour' / 'last.safetensors'}"]
    bank = TaskBank.from_files(files, checkpoint=checkpoint, device="cpu", precision="fp32")
    assert [bank.info(n).objective for n in bank.tasks] == ["multilabel", "classification"]
    images = [Image.open(data / "photos" / f"test_{j:03d}.png") for j in range(4)]
    mixed = bank.predict_images(images, top_k=3, threshold=0.3)
    for name in ("tags", "colour"):
        alone = bank.predict_images(images, tasks=[name], top_k=3, threshold=0.3)
        assert [r for r in mixed if r["task"] == name] == alone
    tags = [r for r in mixed if r["task"] == "tags"]
    assert all("labels" in r and all(t["prob"] >= 0.3 for t in r["labels"]) for r in tags)
    assert all("labels" not in r for r in mixed if r["task"] == "colour")


def test_a_task_file_with_an_unknown_objective_is_refused_in_one_line(runs, tmp_path):
    root = runs[0]
    from safetensors.torch import load_file, save_file

    source = root / "tags" / "last.safetensors"
    meta = read_task_file(source)[0].meta
    meta["objective"] = "regression"
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(source), str(bad), metadata={"adaptformer": json.dumps(meta)})
    with pytest.raises(AdaptFormerError, match=r"bad.safetensors: objective: expected one of classification"):
        read_task_file(bad)


def png_bytes(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def test_server_answers_multi_label_and_single_label_tasks_in_one_request(runs, tmp_path):
    root, data, _, _ = runs
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    shutil.copy(root / "tags" / "last.safetensors", task_dir / "tags.safetensors")
    shutil.copy(root / "colour" / "last.safetensors", task_dir / "colour.safetensors")
    process, url = start_server(
        ["--task-dir", str(task_dir), "--checkpoint", str(root / "tiny_vit.safetensors"), "--precision", "fp32"]
    )
    try:
        bank = TaskBank.open(
            task_dir=task_dir, checkpoint=str(root / "tiny_vit.safetensors"), device="cpu", precision="fp32"
        )
        image = data / "photos" / "test_003.png"
        body = httpx.post(
            f"{url}/predict?threshold=0.4&top_k=3", files={"file": ("x.png", png_bytes(image), "image/png")}, timeout=30
        )
        assert body.status_code == 200, body.text
        results = {r["task"]: r for r in body.json()["results"]}
        reference = {r["task"]: r for r in bank.predict_images([Image.open(image)], top_k=3, threshold=0.4)}
        for name in ("tags", "colour"):
            got, want = results[name], reference[name]
            assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
            assert all(abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(got["top_k"], want["top_k"], strict=True))
        assert results["tags"]["threshold"] == 0.4 and "labels" not in results["colour"]
        listed = {t["name"]: t["objective"] for t in httpx.get(f"{url}/tasks", timeout=5).json()}
        assert listed == {"colour": "classification", "tags": "multilabel"}
        bad = httpx.post(
            f"{url}/predict/tags?threshold=7", files={"file": ("x.png", png_bytes(image), "image/png")}, timeout=30
        )
        assert bad.status_code == 422 and "threshold" in bad.json()["detail"]
    finally:
        stop_server(process)


def test_report_names_the_score_map_for_multi_label_runs(runs, tmp_path, capsys):
    root = runs[0]
    assert main(["report", str(root / "tags"), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| mAP % |" in table and f"{runs[2]['mAP']:.2f}" in table
