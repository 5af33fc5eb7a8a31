"""Multi-label datasets (the generic csv layout and NUS-WIDE's release) and the multi-label objective: mAP equal
to scikit-learn's average_precision_score, the binary cross-entropy, thresholded answers."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from adaptformer import AdaptFormerError
from adaptformer.data.registry import build_split, fold_split, get_dataset, labels_of
from adaptformer.objectives import MultiLabel, average_precision, check_threshold, get_objective, primary_score
from formats import write_multilabel, write_nuswide


def test_average_precision_equals_scikit_learn_with_ties_and_a_class_without_positives():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, (200, 5)) / 5.0  # few distinct values: many tied scores
    targets = (rng.random((200, 5)) < 0.3).astype(float)
    targets[:, 4] = 0  # no positive: no AP
    ap = average_precision(scores, targets)
    for c in range(4):
        assert ap[c] == pytest.approx(average_precision_score(targets[:, c], scores[:, c]), abs=1e-12)
    assert np.isnan(ap[4])


def test_scorer_map_is_the_mean_over_classes_with_positives_and_counts_the_others():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(64, 4)), dtype=torch.float32)
    targets = torch.tensor(rng.random((64, 4)) < 0.4, dtype=torch.float32)
    targets[:, 3] = 0
    scorer = MultiLabel().scorer(4, torch.device("cpu"))
    scorer.add(logits[:40], targets[:40])
    scorer.add(logits[40:], targets[40:])
    result = scorer.result()
    probs = logits.sigmoid().numpy()
    expected = np.mean([average_precision_score(targets[:, c], probs[:, c]) for c in range(3)])
    assert result["mAP"] == pytest.approx(100 * expected, abs=1e-4)
    assert result["classes_without_positives"] == 1 and result["per_class_ap"][3] is None
    assert result["loss"] == pytest.approx(F.binary_cross_entropy_with_logits(logits, targets).item(), abs=1e-5)
    assert result["samples"] == 64


def test_multilabel_loss_answer_and_threshold():
    objective = get_objective("multilabel")
    logits, targets = torch.tensor([[2.0, -1.0, 0.1]]), torch.tensor([[1.0, 0.0, 1.0]])
    assert objective.loss(logits, targets).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, targets).item()
    )
    answer = objective.answer(torch.tensor([2.0, -1.0, 0.1]), ["a", "b", "c"], top_k=2, threshold=0.5)
    assert [t["label"] for t in answer["labels"]] == ["a", "c"]  # every class >= 0.5, most probable first
    assert [t["label"] for t in answer["top_k"]] == ["a", "c"] and answer["threshold"] == 0.5
    assert answer["labels"][0]["prob"] == pytest.approx(torch.tensor(2.0).sigmoid().item(), abs=1e-6)
    none = objective.answer(torch.tensor([-3.0, -2.0, -1.0]), ["a", "b", "c"], top_k=1, threshold=0.9)
    assert none["labels"] == [] and len(none["top_k"]) == 1
    single = get_objective(None).answer(torch.tensor([2.0, -1.0, 0.1]), ["a", "b", "c"], top_k=3, threshold=0.5)
    assert "labels" not in single and sum(t["prob"] for t in single["top_k"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(AdaptFormerError, match=r"--threshold: expected a probability in \[0, 1\], got 1.5"):
        check_threshold(1.5)
    with pytest.raises(AdaptFormerError, match="objective: expected one of classification, multilabel"):
        get_objective("regression")
    assert primary_score({"metric": "mAP", "mAP": 50.0, "best_mAP": 60.0}, best=True) == 60.0
    assert primary_score({"top1": 90.0}) == 90.0  # summaries written before objectives


def test_generic_multilabel_csv_gives_multi_hot_targets(tmp_path):
    root = write_multilabel(tmp_path / "ml")
    assert get_dataset("multilabel").objective == "multilabel"
    train = build_split("multilabel", root, True)
    test = build_split("multilabel", root, False)
    assert train.classes == test.classes == ["blue", "green", "red"]  # sorted labels of train.csv
    _, target = train.dataset[3]  # labels red|green
    assert target.tolist() == [0.0, 1.0, 1.0]
    _, empty = train.dataset[7]  # no label
    assert empty.tolist() == [0.0, 0.0, 0.0]
    (root / "classes.txt").write_text("red\ngreen\nblue\n")
    assert build_split("multilabel", root, True).dataset[3][1].tolist() == [1.0, 1.0, 0.0]  # classes.txt order
    labels = labels_of(train.dataset)
    kept, held = fold_split(labels, 0, 4)  # no single label: random folds
    assert len(held) == 6 and sorted(kept + held) == list(range(24))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda r: (r / "test.csv").write_text("path,labels\nphotos/test_000.png,red|purple\n"),
            r"test.csv:2: label\(s\) purple not among the 3 classes",
        ),
        (
            lambda r: (r / "train.csv").write_text("file,tags\nphotos/train_000.png,red\n"),
            r"train.csv: expected a header 'path,labels', got 'file,tags'",
        ),
        (lambda r: (r / "photos" / "test_001.png").unlink(), r"test.csv: 1 of 16 listed images are missing"),
        (lambda r: (r / "train.csv").unlink(), r"train.csv not found \(a multilabel dataset holds train.csv"),
        (lambda r: (r / "classes.txt").write_text("red\nred\n"), r"classes.txt: a class is listed twice"),
    ],
)
def test_generic_multilabel_refusals_name_the_file(tmp_path, edit, message):
    root = write_multilabel(tmp_path / "ml")
    edit(root)
    with pytest.raises(AdaptFormerError, match=message) as error:
        build_split("multilabel", root, False)
    assert "\n" not in str(error.value)


def test_nuswide_official_lists_skip_and_count_missing_images(tmp_path, caplog):
    root = write_nuswide(tmp_path / "nus", train=12, test=8, missing=2)
    with caplog.at_level(logging.WARNING, logger="adaptformer.data"):
        train = build_split("nuswide", root, True)
    assert len(train.classes) == 81 and train.classes[:3] == ["red", "green", "blue"]
    assert len(train.dataset) == 10 and "2 of 12 listed images are missing" in caplog.text
    image, target = train.dataset[0]  # labels red + concept 3 (j % 4 == 0)
    assert image.size == (32, 32) and target.shape == (81,) and target.nonzero().flatten().tolist() == [0, 3]
    assert len(build_split("nuswide", root, False).dataset) == 6


def test_nuswide_refusals(tmp_path):
    root = write_nuswide(tmp_path / "nus")
    (root / "TrainTestLabels" / "Labels_blue_Test.txt").write_text("0\n1\n")
    with pytest.raises(AdaptFormerError, match=r"Labels_blue_Test.txt: 2 lines, but the image list has 8"):
        build_split("nuswide", root, False)
    (root / "Concepts81.txt").unlink()
    with pytest.raises(AdaptFormerError, match=r"no Concepts81.txt"):
        build_split("nuswide", root, True)
