"""``adaptformer tune``: pick the recipe for your own data on a validation split, then retrain the winner.

No single recipe fits every small dataset: the paper's ImageNet-scale crops and flips, or its learning rate, can
cost several points on a few hundred images. ``tune`` never looks at the test split while choosing:

1. every trial trains on the training set minus a held-out ``validation_split`` (stratified, the same for every
   trial) and is scored by its best validation top-1 (mAP for a multi-label dataset). Before any trial the data
   is read and the batch checked: a batch the trials' training sets cannot fill a few times an epoch is lowered;
2. the search is Optuna's (a maintained library; ``pip install "adaptformer[tune]"``): a TPE sampler over the
   axes (the method's learning rates, the crop recipe, crop scale, flips and the method's own axes,
   ``MethodConfig.tune_axes``; or a ``--space`` file), and a pruner that stops a trial whose validation score
   after an epoch is below the median of the earlier trials' at that epoch (``--pruner median``; ``halving``:
   successive halving; ``none``). ``--time-budget SECONDS`` stops starting trials once spent (``--trials N``
   caps their number); a trial already running finishes or is pruned. The first trial is the base
   configuration itself (the default space gains the base's values, its rate by the scaling rule), so the search
   is scored against the recipe it would replace. ``tune(..., ray=RayOptions(...))`` runs the same search on
   Ray Tune (``tune_ray``);
3. folds only where they change the decision: when the two best trials are closer than two validation images'
   worth, both are scored again by ``SMALL_FOLDS``-fold validation (budget allowing) and the better mean wins
   (``--folds K`` scores every trial by K folds instead, without pruning);
4. the winner is retrained on the whole training set and evaluated on the test split.

The study lives in ``OUT/study.db`` (SQLite) and trials in ``OUT/trials/NNN``, so an interrupted ``tune`` rerun
goes on with the same study (a trial that was running is failed and its configuration tried again) and the time
already spent counts against the budget. ``OUT/tune.md`` and ``OUT/tune.json`` hold the table; ``OUT/final`` is
the retrained run (its task files are the result); ``adaptformer report OUT/trials/*`` plots the trials.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from ..errors import AdaptFormerError
from ..methods.registry import get_method
from ..objectives import METRIC_LABELS
from ..train.config import TrainConfig, read_yaml_mapping
from ..train.data import training_labels
from ..train.optim import scaled_lr
from ..utils.atomic import atomic_write_text
from ..utils.extras import require
from ..utils.options import is_int
from .dispatch import RayOptions, train_run
from .sweep import _name
from .trials import Clock, Scored, Search, run_trial
from .tune_ray import search_on_ray

#: the axes every method searches beside its learning rates (``MethodConfig.learning_rates``) and its own
COMMON_AXES = [("train_crop", ["random_resized", "pad"]), ("scale_min", [0.08, 0.4, 0.9]), ("hflip", [0.0, 0.5])]
#: the folds that settle a close call between the two best trials
SMALL_FOLDS = 5
MIN_STEPS_PER_EPOCH = 4
PRUNERS = ("median", "halving", "none")


def default_space(method: str) -> list[tuple[str, list[Any]]]:
    """The axes that matter for ``method``: its learning rates, the crop recipe (RandomResizedCrop, or resize +
    pad + random crop as small images train), crop scale, flips, then the method's own
    (``MethodConfig.tune_axes``: adapter scale and bottleneck for AdaptFormer, prompt tokens for VPT, ...)."""
    config = get_method(method).config
    own = [(field, list(values)) for field, values in config.tune_axes]
    return [("lr", list(config.learning_rates)), *COMMON_AXES, *own]


def load_space(path: str) -> list[tuple[str, list[Any]]]:
    """A search space file: ``field: [values...]`` per axis."""
    data = read_yaml_mapping(Path(path), "--space")
    for field, values in data.items():
        if not isinstance(values, list) or not values:
            raise AdaptFormerError(f"--space {path}: {field}: expected a non-empty list of values, got {values!r}")
    if not data:
        raise AdaptFormerError(f"--space {path}: expected at least one field: [values]")
    return list(data.items())


def base_point(base: dict[str, Any], space: list[tuple[str, list[Any]]]) -> dict[str, Any]:
    """The values the flat options ``base`` train with on the search's axes (``lr``: the absolute rate it trains
    at, by the linear scaling rule when only ``blr`` is set)."""
    point = {field: base.get(field) for field, _ in space}
    if "lr" in point and point["lr"] is None:
        point["lr"] = scaled_lr(base["blr"], base.get("effective_batch") or base["batch_size"])
    return point


def _with(values: list[Any], value: Any) -> list[Any]:
    """An axis's values with ``value`` among them (numbers kept in order)."""
    if value in values or value is None:
        return list(values)
    joined = [*values, value]
    return sorted(joined) if all(isinstance(v, int | float) and not isinstance(v, bool) for v in joined) else joined


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
    folds: int = 1,
    time_budget: float | None = None,
    trials: int | None = None,
    pruner: str = "median",
    seed: int = 0,
    ray: RayOptions | None = None,
) -> dict[str, Any]:
    """Search ``space`` (default: ``default_space(method)``) from the flat options ``base`` with Optuna (here, or
    with Ray Tune on a cluster when ``ray`` is given), then retrain the winner; returns the result that
    ``OUT/tune.json`` holds (see the module docstring)."""
    optuna = require("optuna", "adaptformer tune")
    out = Path(out)
    config = TrainConfig.from_flat(base)
    base = {k: v for k, v in config.to_dict().items() if k not in ("out", "resume", "overwrite")}
    searched_default = not space
    space = _unique_axes(space or default_space(config.method))
    if not 0 < validation_split < 1:
        raise AdaptFormerError(f"--validation-split: expected a fraction in (0, 1) for tune, got {validation_split}")
    if pruner not in PRUNERS:
        raise AdaptFormerError(f"--pruner: expected one of {', '.join(PRUNERS)}, got {pruner!r}")
    if time_budget is not None and not time_budget > 0:
        raise AdaptFormerError(f"--time-budget: expected a positive number of seconds, got {time_budget}")
    if trials is not None and not is_int(trials, 1):
        raise AdaptFormerError(f"--trials: expected a positive integer, got {trials!r}")
    if ray is not None and folds != 1:
        raise AdaptFormerError("tune --ray: --folds scores every trial by several runs; use it without --ray")
    size = len(training_labels(config))  # the data is readable before any trial
    if not is_int(folds, 1) or folds > max(1, size // 2):
        raise AdaptFormerError(f"--folds: expected 1 to {max(1, size // 2)} for {size} training images, got {folds}")
    held_out = max(1, round(validation_split * size))
    per_trial = size - (size // folds if folds > 1 else held_out)
    base = feasible_batch({**base, "eval_every": 1}, per_trial, log)
    start = base_point(base, space)
    if searched_default:  # the recipe the search would replace is one of its points (its rate, say)
        space = [(field, _with(values, start[field])) for field, values in space]
    elif any(start[field] not in values for field, values in space):
        start = None  # a user's space that leaves the base out: the search starts where the sampler says
    check_space(base, space)
    out.mkdir(parents=True, exist_ok=True)
    validation = {"validation_split": validation_split} if folds == 1 else {"validation_split": 0.0}
    search = Search(base, space, validation, folds, pruner if folds == 1 else "none", seed, time_budget, trials, start)
    clock = Clock(out)
    if ray is None:
        scored = _search_here(optuna, search, out, clock, log)
    else:
        scored = search_on_ray(search, out, ray.check(), clock, log)
    finished = [t for t in scored if t.status == "complete"]
    if not finished:
        errors = [t.error for t in scored if t.error]
        raise AdaptFormerError(f"tune: no trial finished; the first error: {errors[0] if errors else 'none ran'}")
    ranked = sorted(finished, key=lambda t: -t.value)
    winner, decided_by = ranked[0], "the held-out split"
    if folds == 1 and len(ranked) > 1 and ranked[0].value - ranked[1].value < 2 * 100.0 / held_out:
        winner, decided_by = _settle(ranked[:2], base, out, time_budget, clock.seconds(), log)
    chosen = {field: winner.params[field] for field, _ in space}
    log(f"tune: retraining {_name(chosen)} on the whole training set (decided by {decided_by})")
    final = train_run(out / "final", {**base, **chosen, "validation_split": 0.0}, "final")
    if final.get("error"):
        log(f"tune: the final run failed: {final['error']}")
    clock.save()
    result = {
        "chosen": chosen,
        "decided_by": decided_by,
        "validation_split": validation_split if folds == 1 else None,
        "folds": folds,
        "training_images": size,
        "trial_training_images": per_trial,
        "batch_size": base.get("batch_size"),
        "effective_batch": base.get("effective_batch"),
        "metric": final.get("metric") or "top1",
        "validation_score": winner.value,
        "test_score": final.get("score"),
        "final": {**final, "run_dir": str(out / "final")},
        "trials": [t.row() for t in scored],
        "space": {field: list(values) for field, values in space},
        "pruner": search.pruner,
        "searched_on": "ray" if ray is not None else "here",
        "time_budget": time_budget,
        "seconds": round(clock.seconds(), 1),
    }
    atomic_write_text(out / "tune.json", json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out / "tune.md", tune_markdown(result, space))
    return result


def _unique_axes(space: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
    """One axis per field (a field listed twice keeps its first values); values are Optuna's categories."""
    seen: dict[str, list[Any]] = {}
    for field, values in space:
        seen.setdefault(field, list(values))
    return list(seen.items())


def _search_here(optuna, search: Search, out: Path, clock: Clock, log) -> list[Scored]:
    """Optuna's study in ``OUT/study.db``, its trials trained one after another in this process."""
    study = _study(optuna, out, search.pruner, search.seed)
    if search.start is not None and not study.trials:
        study.enqueue_trial(search.start)

    def objective(trial) -> float:
        values = {field: trial.suggest_categorical(field, values) for field, values in search.space}
        name = f"{trial.number:03d}"
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        for earlier in done:
            if earlier.params == values:  # TPE proposes a finished configuration again: its score, not a rerun
                trial.set_user_attr("same_as", f"{earlier.number:03d}")
                if len({json.dumps(t.params, sort_keys=True, default=str) for t in done}) >= search.combinations:
                    study.stop()  # every configuration of the space has been scored
                return earlier.value
        log(f"tune: trial {name}: {_name(values)}")
        try:
            score = _score(out / "trials" / name, search.values(values), name, search.folds, trial, optuna, log)
        except AdaptFormerError as error:  # a diverging configuration: recorded, and the search goes on
            trial.set_user_attr("error", str(error))
            log(f"tune: trial {name} failed: {error}")
            raise
        finally:
            clock.save()
        return score

    remaining = clock.remaining(search.time_budget)
    if remaining is None or remaining > 0:
        waiting = optuna.trial.TrialState.WAITING  # the enqueued base point is a trial to run, not one run
        ran = [t for t in study.trials if t.state != waiting]
        left = None if search.trials is None else max(0, search.trials - len(ran))
        study.optimize(objective, n_trials=left, timeout=remaining, catch=(AdaptFormerError,))
    return [_scored(t) for t in study.trials if t.state != optuna.trial.TrialState.WAITING]


def _scored(trial) -> Scored:
    same_as = trial.user_attrs.get("same_as")
    state = trial.state.name.lower()
    if state == "fail":
        state = "failed"
    return Scored(
        number=trial.number,
        params=dict(trial.params),
        value=trial.value,
        status=f"{state} (as {same_as})" if same_as else state,
        epochs=max(trial.intermediate_values) if trial.intermediate_values else None,
        seconds=trial.duration.total_seconds() if trial.duration else None,
        error=trial.user_attrs.get("error"),
    )


def _study(optuna, out: Path, pruner: str, seed: int):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # heartbeats and the retry callback are marked experimental (since v2.8)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{out / 'study.db'}",
            heartbeat_interval=30,
            grace_period=60,  # a trial whose process died: failed, and tried again once
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1),
        )
    pruners = {
        # no pruning before the third evaluated epoch: the warm-up's first epochs say little about the end
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        "none": optuna.pruners.NopPruner,
    }
    return optuna.create_study(
        study_name="tune",
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4),
        pruner=pruners[pruner](),
    )


def _score(directory: Path, values: dict[str, Any], name: str, folds: int, trial, optuna, log) -> float:
    """A trial's validation score: its best epoch on the held-out split (reported each epoch, pruned where the
    pruner says), or the mean over ``folds`` folds of each fold's best."""
    if folds > 1:
        scores = [run_trial(directory / f"fold={k}", {**values, "validation_fold": f"{k}/{folds}"}, f"{name}/fold={k}")
                  for k in range(folds)]  # fmt: skip
        return sum(scores) / len(scores)

    def report(epoch: int, score: float) -> None:
        trial.report(score, epoch)
        if trial.should_prune():
            log(f"tune: trial {name} pruned after epoch {epoch} (validation {score:.2f})")
            raise optuna.TrialPruned()

    return run_trial(directory, values, name, report)


def _settle(top: list, base: dict[str, Any], out: Path, budget: float | None, spent: float, log):
    """The better of two close trials by ``SMALL_FOLDS``-fold validation, where the budget leaves room for it
    (about twice a trial's time per fold set); else the held-out split's winner."""
    cost = sum(t.seconds or 0.0 for t in top) * SMALL_FOLDS
    if budget is not None and spent + cost > budget * 1.25:
        return top[0], "the held-out split (too close to call; no budget left for folds)"
    means = []
    for trial in top:
        values = {**base, **trial.params, "validation_split": 0.0}
        scores = [
            run_trial(
                out / "folds" / f"{trial.number:03d}" / f"fold={k}",
                {**values, "validation_fold": f"{k}/{SMALL_FOLDS}"},
                f"{trial.number:03d}/fold={k}",
            )
            for k in range(SMALL_FOLDS)
        ]
        means.append(sum(scores) / len(scores))
        log(f"tune: trial {trial.number:03d}: {SMALL_FOLDS}-fold validation {means[-1]:.2f}")
    better = max(range(len(top)), key=lambda i: means[i])
    return top[better], f"{SMALL_FOLDS}-fold validation between the two best ({means[0]:.2f} vs {means[1]:.2f})"


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


def tune_markdown(result: dict[str, Any], space: list[tuple[str, list[Any]]]) -> str:
    fields = [field for field, _ in space]
    metric = METRIC_LABELS.get(result.get("metric"), "score")
    validation = (
        f"{result['folds']}-fold (stratified, fixed) over the {result['training_images']} training images"
        if result.get("folds", 1) > 1
        else f"{result['validation_split']:g} of the training set, held out (stratified, fixed)"
    )
    budget = f"{result['time_budget']:g} s budget" if result.get("time_budget") else "no time budget"
    lines = [
        "# Tuning",
        "",
        f"Validation: {validation}. Optuna TPE over {', '.join(fields)}; pruner {result['pruner']}; {budget}.",
        "",
        "| trial | " + " | ".join(fields) + f" | validation {metric} | epochs | s | status |",
        "|---|" + "---|" * len(fields) + "---|---|---|---|",
    ]
    for trial in result["trials"]:
        score = trial["validation_score"]
        cells = [str(trial["values"].get(f, "")) for f in fields]
        lines.append(
            f"| {trial['run']} | " + " | ".join(cells) + f" | {'—' if score is None else f'{score:.2f}'} | "
            f"{trial['epochs'] or '—'} | {trial['seconds'] or '—'} | {trial['status']} |"
        )
    chosen = ", ".join(f"{k}={v}" for k, v in result["chosen"].items())
    test = result["test_score"]
    lines += [
        "",
        f"**Chosen:** {chosen} (validation {metric} {result['validation_score']:.2f}; decided by "
        f"{result['decided_by']}).",
        "",
        f"**Retrained on the whole training set:** test {metric} {'—' if test is None else f'{test:.2f}'} "
        f"({result['final']['run_dir']}). Total time {result['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)
