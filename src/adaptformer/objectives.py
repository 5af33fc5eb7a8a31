"""What a task predicts and how it is scored: the one place that differs between single- and multi-label tasks.

=================  =========================  ==========================  ==============================
objective          probabilities              training loss               scores (primary first)
=================  =========================  ==========================  ==============================
``classification`` softmax over the classes   cross-entropy               top1, top5, loss
``multilabel``     a sigmoid per class        binary cross-entropy        mAP, per_class_ap, loss
=================  =========================  ==========================  ==============================

The head is the same linear layer for both; a task records its objective (task files: ``"objective"``) and the
trainer, ``evaluate``, ``predict`` and the server ask it for the loss, the scores and the answer, so no caller
branches on the kind of task. mAP is the mean over classes of scikit-learn's ``average_precision_score`` (the
step-wise, non-interpolated AP); classes with no positive sample in the evaluated split have no AP and are left out
of the mean (counted in ``classes_without_positives``), as the NUS-WIDE protocol does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AdaptFormerError
from .runtime.distributed import all_gather_objects, all_reduce_sum

DEFAULT_THRESHOLD = 0.5  # multi-label answers: every class at least this probable
#: how a primary metric is named in tables, plots and logs
METRIC_LABELS = {"top1": "top-1", "mAP": "mAP"}


class Scorer:
    """Accumulates one evaluation's logits and targets; ``result()`` sums them over the ranks."""

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError


class Objective:
    name: str
    metric: str  # the primary score: what summaries report and a run's best checkpoint is chosen by
    reported: tuple[str, ...]  # the scalar scores summaries and task files record

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        raise NotImplementedError

    def scorer(self, num_classes: int, device: torch.device) -> Scorer:
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self, result: dict[str, Any]) -> str:
        """An evaluation's scores in a log line."""
        raise NotImplementedError

    def answer(self, logits: torch.Tensor, classes: list[str], top_k: int, threshold: float) -> dict[str, Any]:
        """One sample's answer: ``top_k`` (the k most probable classes) and, for multi-label tasks, ``labels``
        (every class at least ``threshold`` probable)."""
        probs = self.probabilities(logits.float())
        top = probs.topk(min(top_k, len(probs)))
        return {"top_k": _labelled(top.values.tolist(), top.indices.tolist(), classes)}


def _labelled(probs: list[float], indices: list[int], classes: list[str]) -> list[dict[str, Any]]:
    return [{"label": classes[j], "prob": round(p, 6)} for p, j in zip(probs, indices, strict=True)]


class Classification(Objective):
    name, metric, reported = "classification", "top1", ("top1", "top5")

    def loss(self, logits, targets, label_smoothing=0.0):
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    def scorer(self, num_classes, device):
        return TopKScorer(num_classes, device)

    def probabilities(self, logits):
        return logits.softmax(dim=-1)

    def describe(self, result):
        return f"top-1 {result['top1']:.2f}, top-5 {result['top5']:.2f}"


class MultiLabel(Objective):
    name, metric, reported = "multilabel", "mAP", ("mAP",)

    def loss(self, logits, targets, label_smoothing=0.0):
        # smoothing a multi-hot target pulls each class towards 1/2 by the given share
        targets = targets.to(logits.dtype)
        if label_smoothing:
            targets = targets * (1 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, targets)

    def scorer(self, num_classes, device):
        return AveragePrecisionScorer(num_classes)

    def probabilities(self, logits):
        return logits.sigmoid()

    def describe(self, result):
        score = "n/a (no class has a positive)" if result["mAP"] is None else f"{result['mAP']:.2f}"
        return f"mAP {score} over {result['samples']} samples"

    def answer(self, logits, classes, top_k, threshold):
        answer = super().answer(logits, classes, top_k, threshold)
        probs = self.probabilities(logits.float())
        kept = (probs >= threshold).nonzero().flatten()
        kept = kept[probs[kept].argsort(descending=True)]
        answer["labels"] = _labelled(probs[kept].tolist(), kept.tolist(), classes)
        answer["threshold"] = threshold
        return answer


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (Classification(), MultiLabel())}


def get_objective(name: str | None) -> Objective:
    """The objective of that name (None: a single-label task, what files written before objectives hold)."""
    name = name or "classification"
    if name not in OBJECTIVES:
        raise AdaptFormerError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


def check_threshold(value: Any, option: str = "--threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise AdaptFormerError(f"{option}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def primary_score(summary: dict[str, Any], best: bool = False) -> float | None:
    """A run summary's primary score (``top1`` of single-label runs, ``mAP`` of multi-label ones)."""
    metric = summary.get("metric", "top1")
    return summary.get(f"best_{metric}" if best else metric)


class TopKScorer(Scorer):
    def __init__(self, num_classes: int, device: torch.device):
        self.k = min(5, num_classes)
        self.totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@k, loss sum, count

    def add(self, logits, targets):
        hits = logits.topk(self.k, dim=1).indices == targets[:, None]
        loss = F.cross_entropy(logits, targets, reduction="sum")
        counts = [hits[:, 0].sum().item(), hits.any(1).sum().item(), loss.item(), len(targets)]
        self.totals += torch.tensor(counts, dtype=torch.float64, device=self.totals.device)

    def result(self):
        correct1, correctk, loss, count = all_reduce_sum(self.totals).tolist()
        count = max(count, 1)
        return {
            "top1": 100 * correct1 / count,
            "top5": 100 * correctk / count,
            "loss": loss / count,
            "samples": int(count),
        }


class AveragePrecisionScorer(Scorer):
    """Keeps every score (N x C floats: 33 MB for NUS-WIDE's 100k test images) and ranks them at the end."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def add(self, logits, targets):
        self.scores.append(logits.float().sigmoid().cpu())
        self.targets.append(targets.float().cpu())

    def result(self):
        empty = torch.zeros(0, self.num_classes)
        scores = torch.cat(self.scores) if self.scores else empty
        targets = torch.cat(self.targets) if self.targets else empty
        gathered = all_gather_objects((scores, targets))
        scores = torch.cat([s for s, _ in gathered]).double().numpy()
        targets = torch.cat([t for _, t in gathered]).numpy()
        ap = average_precision(scores, targets)
        defined = ap[~np.isnan(ap)]
        probs = np.clip(scores, 1e-12, 1 - 1e-12)
        loss = -(targets * np.log(probs) + (1 - targets) * np.log(1 - probs)).mean() if len(scores) else 0.0
        return {
            "mAP": 100 * float(defined.mean()) if len(defined) else None,
            "per_class_ap": [None if np.isnan(a) else round(100 * float(a), 4) for a in ap],
            "classes_without_positives": int(np.isnan(ap).sum()),
            "loss": float(loss),
            "samples": len(scores),
        }


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP of (N, C) scores against (N, C) 0/1 targets: sum over the distinct thresholds, highest first,
    of (recall gained) x precision, as scikit-learn's ``average_precision_score``; NaN for a class with no positive."""
    result = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        truth = targets[:, c] > 0.5
        positives = truth.sum()
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        ranked, hits = scores[order, c], truth[order]
        true_pos = np.cumsum(hits)
        threshold_ends = np.r_[ranked[1:] != ranked[:-1], True]  # tied scores form one threshold
        true_pos = true_pos[threshold_ends]
        seen = np.flatnonzero(threshold_ends) + 1
        recall = true_pos / positives
        result[c] = np.sum(np.diff(np.r_[0.0, recall]) * (true_pos / seen))
    return result
