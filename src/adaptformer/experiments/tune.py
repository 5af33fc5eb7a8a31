"""``adaptformer tune``: pick the recipe for your own data on a validation split, then retrain the winner.

No single recipe fits every small dataset: the paper's ImageNet-scale crops and flips, or its learning rate, can
cost several points on a few hundred images. ``tune`` never looks at the test split while choosing:

1. every trial trains on the training set minus a held-out ``validation_split`` (stratified, the same for every
   trial) and is scored by its final top-1 (mAP for a multi-label dataset) on that held-out part; below
   ``SMALL_TRAINING_SET`` images it is scored by ``SMALL_FOLDS``-fold validation instead (the mean over the folds:
   one split of 49 images moves top-1 by two points an image). Before any trial the data is read and the batch
   checked: a batch the trials' training sets cannot fill a few times an epoch is lowered (and said so);
2. the search is coordinate-wise: the axes are tried one after another (learning rate first, and again last),
   each axis's values with the best values found so far and the base values for the rest; the best value is
   kept (ties keep the earlier value), and a configuration already tried is not trained again;
3. the winner is retrained on the whole training set and evaluated on the test split.

Trials are ordinary run directories under ``OUT/trials`` named by their searched values, so a rerun skips the
finished ones and resumes an interrupted one, and ``adaptformer report OUT/trials/*`` plots them. ``OUT/tune.md``
and ``OUT/tune.json`` hold the table; ``OUT/final`` is the retrained run (its task files are the result).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..errors import AdaptFormerError
from ..methods.registry import get_method
from ..objectives import METRIC_LABELS
from ..train.config import TrainConfig, read_yaml_mapping
from ..train.data import training_labels
from .sweep import _name, train_run

#: the axes every method searches (its learning rates, ``MethodConfig.learning_rates``, before and after them)
COMMON_AXES = [("train_crop", ["random_resized", "pad"]), ("scale_min", [0.08, 0.4, 0.9]), ("hflip", [0.0, 0.5])]
#: below this many training images a trial is scored by k-fold validation: one split of a few dozen images
#: moves top-1 by points per image
SMALL_TRAINING_SET = 2000
SMALL_FOLDS = 5
MIN_STEPS_PER_EPOCH = 4


def default_space(method: str) -> list[tuple[str, list[Any]]]:
    """The axes that matter for ``method``: lr, the crop recipe (RandomResizedCrop, or resize + pad + random
    crop as small images train), crop scale, flips, the method's own (``MethodConfig.tune_axes``: adapter scale
    and bottleneck for AdaptFormer, prompt tokens for VPT), then lr once more (the best lr moves with the crops)."""
    config = get_method(method).config
    lr = ("lr", list(config.learning_rates))
    own = [(field, list(values)) for field, values in config.tune_axes]
    return [lr, *COMMON_AXES, *own, lr]


def load_space(path: str) -> list[tuple[str, list[Any]]]:
    """A search space file: ``field: [values...]`` per axis, searched in the file's order."""
    data = read_yaml_mapping(Path(path), "--space")
    for field, values in data.items():
        if not isinstance(values, list) or not values:
            raise AdaptFormerError(f"--space {path}: {field}: expected a non-empty list of values, got {values!r}")
    if not data:
        raise AdaptFormerError(f"--space {path}: expected at least one field: [values]")
    return list(data.items())


def check_space(base: dict[str, Any], space: list[tuple[str, list[Any]]]) -> None:
    """Every value of every axis is a valid training configuration with the base (before any trial runs)."""
    for field, values in space:
        for value in values:
            try:
                TrainConfig.from_flat({**base, field: value}, source=f"tune: {field}={value!r}")
            except AdaptFormerError as error:
                message = str(error)
                raise AdaptFormerError(message if message.startswith("tune:") else f"tune: {message}") from None


def tune(
    base: dict[str, Any],
    out: str | Path,
    space: list[tuple[str, list[Any]]] | None = None,
    validation_split: float = 0.2,
    log=print,
    folds: int | None = None,
) -> dict[str, Any]:
    """Search ``space`` (default: ``default_space(method)``) from the flat options ``base``, retrain the winner;
    returns the result that ``OUT/tune.json`` holds. ``folds`` (default: ``SMALL_FOLDS`` below
    ``SMALL_TRAINING_SET`` training images, else 1) > 1 scores each trial by k-fold validation."""
    out = Path(out)
    config = TrainConfig.from_flat(base)
    base = {k: v for k, v in config.to_dict().items() if k not in ("out", "resume", "overwrite")}
    space = space or default_space(config.method)
    if not 0 < validation_split < 1:
        raise AdaptFormerError(f"--validation-split: expected a fraction in (0, 1) for tune, got {validation_split}")
    size = len(training_labels(config))  # the data is readable before any trial
    folds = folds if folds is not None else (SMALL_FOLDS if size < SMALL_TRAINING_SET else 1)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1 or folds > max(1, size // 2):
        raise AdaptFormerError(f"--folds: expected 1 to {max(1, size // 2)} for {size} training images, got {folds}")
    per_trial = size - (size // folds if folds > 1 else max(1, round(validation_split * size)))
    base = feasible_batch(base, per_trial, log)
    check_space(base, space)
    validation = {"validation_split": validation_split} if folds == 1 else {"validation_split": 0.0}
    started = time.perf_counter()
    chosen: dict[str, Any] = {}
    trials: dict[str, dict[str, Any]] = {}
    for field, values in space:
        scores = []
        for value in values:
            searched = _searched({**chosen, field: value}, base, space)
            name = _name(searched)
            if name not in trials:
                log(f"tune: trial {len(trials) + 1}: {name}")
                trials[name] = _trial(out / "trials" / name, {**base, **searched, **validation}, name, folds, log)
                trials[name]["values"] = searched
            scores.append((trials[name]["validation_score"], value))
        best = max(scores, key=lambda pair: -1.0 if pair[0] is None else pair[0])  # the first of equal scores
        if best[0] is None:
            first = next(t["error"] for t in trials.values() if t.get("error"))
            raise AdaptFormerError(f"tune: every trial of {field} failed; the first: {first}")
        chosen[field] = best[1]
        log(f"tune: {field} = {best[1]!r} (validation {metric_name(trials)} {best[0]:.2f})")
    winner = _searched(chosen, base, space)
    log(f"tune: retraining {_name(winner)} on the whole training set")
    final = train_run(out / "final", {**base, **winner, "validation_split": 0.0}, "final")
    if final.get("error"):
        log(f"tune: the final run failed: {final['error']}")
    result = {
        "chosen": winner,
        "validation_split": validation_split if folds == 1 else None,
        "folds": folds,
        "training_images": size,
        "trial_training_images": per_trial,
        "batch_size": base.get("batch_size"),
        "effective_batch": base.get("effective_batch"),
        "metric": final.get("metric") or next((t["metric"] for t in trials.values() if t.get("metric")), "top1"),
        "validation_score": trials[_name(winner)]["validation_score"],
        "test_score": final.get("score"),
        "final": {**final, "run_dir": str(out / "final")},
        "trials": list(trials.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "tune.md").write_text(tune_markdown(result, space))
    return result


def feasible_batch(base: dict[str, Any], images: int, log) -> dict[str, Any]:
    """``base`` with a batch a trial's ``images`` can fill ``MIN_STEPS_PER_EPOCH`` times an epoch: the
    effective batch (and the micro-batch) lowered to the largest power of two that does, when they cannot."""
    effective = base.get("effective_batch") or base["batch_size"]
    if images // effective >= MIN_STEPS_PER_EPOCH:
        return base
    fitted = 2 ** max(0, int(math.log2(max(1, images // MIN_STEPS_PER_EPOCH))))
    micro = min(base["batch_size"], fitted)
    while fitted % micro:
        micro //= 2
    log(
        f"tune: a trial trains on {images} images; --effective-batch {effective} -> {fitted} and --batch-size "
        f"{base['batch_size']} -> {micro} (at least {MIN_STEPS_PER_EPOCH} steps an epoch)"
    )
    return {**base, "effective_batch": fitted, "batch_size": micro}


def _trial(directory: Path, values: dict[str, Any], name: str, folds: int, log) -> dict[str, Any]:
    """One configuration: one run on the held-out split, or one run per fold (scored by the folds' mean)."""
    if folds == 1:
        rows = [train_run(directory, values, name)]
    else:
        rows = [
            train_run(directory / f"fold={k}", {**values, "validation_fold": f"{k}/{folds}"}, f"{name}/fold={k}")
            for k in range(folds)
        ]
    errors = [row["error"] for row in rows if row.get("error")]
    if errors:
        log(f"tune: trial {name} failed: {errors[0]}")
    scores = [row["score"] for row in rows if row.get("score") is not None]
    score = sum(scores) / len(scores) if scores and not errors else None
    status = "failed" if errors else ",".join(dict.fromkeys(row["status"] for row in rows))
    return {
        "run": name,
        "status": status,
        "metric": next((row["metric"] for row in rows if row.get("metric")), None),
        "validation_score": score,
        "fold_scores": scores if folds > 1 else None,
        **({"error": errors[0]} if errors else {}),
    }


def _searched(chosen: dict[str, Any], base: dict[str, Any], space: list[tuple[str, list[Any]]]) -> dict[str, Any]:
    """The value of every searched field for a trial: chosen, else the base's (or the axis's first value)."""
    return {field: chosen.get(field, base.get(field, values[0])) for field, values in space}


def _validation_text(result: dict[str, Any]) -> str:
    if result.get("folds", 1) > 1:
        return (
            f"{result['folds']}-fold (stratified, fixed) over the {result['training_images']} training images; "
            "a trial's score is the mean of its folds"
        )
    return f"{result['validation_split']:g} of the training set, held out (stratified, fixed)"


def metric_name(trials: dict[str, dict[str, Any]]) -> str:
    """How the trials' score is named in the log (top-1, or mAP for a multi-label dataset)."""
    metric = next((t["metric"] for t in trials.values() if t.get("metric")), "top1")
    return METRIC_LABELS.get(metric, metric)


def tune_markdown(result: dict[str, Any], space: list[tuple[str, list[Any]]]) -> str:
    fields = list(dict.fromkeys(field for field, _ in space))
    metric = METRIC_LABELS.get(result.get("metric"), "score")
    lines = [
        "# Tuning",
        "",
        f"Validation: {_validation_text(result)}. "
        f"Coordinate search over {', '.join(f for f, _ in space)}, in that order.",
        "",
        "| trial | " + " | ".join(fields) + f" | validation {metric} | status |",
        "|---|" + "---|" * len(fields) + "---|---|",
    ]
    for number, trial in enumerate(result["trials"], 1):
        score = trial["validation_score"]
        cells = [str(trial["values"][f]) for f in fields]
        lines.append(
            f"| {number} | "
            + " | ".join(cells)
            + f" | {'—' if score is None else f'{score:.2f}'} | {trial['status']} |"
        )
    chosen = ", ".join(f"{k}={v}" for k, v in result["chosen"].items())
    test = result["test_score"]
    lines += [
        "",
        f"**Chosen:** {chosen} (validation {metric} {result['validation_score']:.2f}).",
        "",
        f"**Retrained on the whole training set:** test {metric} {'—' if test is None else f'{test:.2f}'} "
        f"({result['final']['run_dir']}). Total time {result['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)
