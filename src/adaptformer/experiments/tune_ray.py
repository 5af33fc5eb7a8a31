"""``adaptformer tune --ray``: the same search with its trials spread over a Ray cluster by Ray Tune.

The sampler is the same Optuna TPE over the same axes (Ray Tune's ``OptunaSearch``), the pruners are Ray Tune's
schedulers that do what Optuna's do here (``median``: ``MedianStoppingRule`` from the third epoch after three
trials; ``halving``: ``ASHAScheduler``, asynchronous successive halving; ``none``: run every trial out), and
each trial is the same training as without Ray, in ``OUT/trials/NNN`` (a file system every node sees), asking Ray
for ``--cpus-per-run`` CPUs and ``--gpus-per-run`` GPUs, so as many run at once as the cluster holds. Ray Tune's
own state is ``OUT/ray``: a rerun restores it and goes on (unfinished trials start again). ``--time-budget`` is
Ray Tune's ``time_budget_s``: once spent, no trial starts and running ones are stopped where they are (their best
epoch so far is their score). The winner is settled and retrained here, as without Ray.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import AdaptFormerError
from ..utils.extras import require
from .dispatch import RayOptions
from .sweep import _name
from .trials import Clock, Scored, Search, run_trial

#: the metric every trial reports each epoch: its best validation score so far (what the search maximises)
METRIC = "best"
#: the key in a trial's config that carries its number (the order the searcher proposed it in)
NUMBER = "tune_trial"


def search_on_ray(search: Search, out: Path, options: RayOptions, clock: Clock, log) -> list[Scored]:
    """Run ``search`` as Ray Tune trials; one ``Scored`` per trial, in the order they were created."""
    ray = require("ray", "tune --ray")
    optuna = require("optuna", "adaptformer tune")
    try:
        from ray import tune as ray_tune
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as error:
        message = f"tune --ray: Ray Tune is not installed ({error}): pip install 'adaptformer[ray]'"
        raise AdaptFormerError(message) from None
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    remaining = clock.remaining(search.time_budget)
    if remaining is not None and remaining <= 0:
        log("tune: the time budget was spent by an earlier run; no trial starts")
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(
            ray_trial,
            search=search,
            trials_dir=str((out / "trials").resolve()),
            threads=max(1, int(options.cpus_per_run)),
        ),  # fmt: skip
        {"cpu": options.cpus_per_run, "gpu": options.gpus_per_run},
    )
    experiment = (out / "ray").resolve()
    callbacks = [_progress(log, clock)]
    if ray_tune.Tuner.can_restore(str(experiment)):
        log(f"tune: going on with the Ray Tune experiment in {experiment}")
        tuner = ray_tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True)
    else:
        searcher = _numbered(OptunaSearch)(
            space={field: optuna.distributions.CategoricalDistribution(values) for field, values in search.space},
            metric=METRIC,
            mode="max",
            sampler=optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=4),
            points_to_evaluate=[search.start] if search.start is not None else None,
        )
        tuner = ray_tune.Tuner(
            trainable,
            tune_config=ray_tune.TuneConfig(
                search_alg=searcher,
                scheduler=_scheduler(search),
                num_samples=search.trials or search.combinations,
                time_budget_s=remaining if remaining is None else max(remaining, 1e-3),
            ),
            run_config=ray_tune.RunConfig(
                name="ray", storage_path=str(experiment.parent), verbose=0, callbacks=callbacks
            ),
        )
    grid = tuner.fit()
    clock.save()
    scored = [_scored(result, search, out) for result in grid]
    return sorted(scored, key=lambda t: t.number)


def _numbered(searcher_class):
    """``searcher_class`` that numbers its suggestions in order (``NUMBER`` in each trial's config), so trials
    are ``OUT/trials/NNN`` as without Ray (Ray Tune's trial ids are random); the count is the searcher's state,
    saved and restored with the experiment."""

    class Numbered(searcher_class):
        count = 0

        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            if isinstance(config, dict):
                config = {**config, NUMBER: self.count}
                self.count += 1
            return config

    return Numbered


def ray_trial(config: dict[str, Any], search: Search, trials_dir: str, threads: int) -> None:
    """One trial inside a Ray worker: the same training as without Ray, reporting its best score each epoch."""
    import torch
    from ray import tune as ray_tune

    torch.set_num_threads(threads)
    number = int(config[NUMBER])
    config = {k: v for k, v in config.items() if k != NUMBER}
    best = -math.inf

    def report(epoch: int, score: float) -> None:
        nonlocal best
        best = max(best, score)
        ray_tune.report({METRIC: best, "score": score, "epoch": epoch})

    directory = Path(trials_dir) / f"{number:03d}"
    try:
        run_trial(directory, search.values(config), f"{number:03d}", report)
    except AdaptFormerError as error:  # the reason, for the table (``_run`` wrote it to the trial's log too)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "error.txt").write_text(f"{error}\n")
        raise


def _scheduler(search: Search):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if search.pruner == "median":  # as Optuna's MedianPruner(n_startup_trials=3, n_warmup_steps=2)
        return MedianStoppingRule(time_attr="epoch", metric=METRIC, mode="max", grace_period=3, min_samples_required=3)
    if search.pruner == "halving":
        epochs = int(search.base.get("epochs") or 1)
        return ASHAScheduler(
            time_attr="epoch", metric=METRIC, mode="max", grace_period=1, reduction_factor=3, max_t=max(epochs, 1)
        )
    return FIFOScheduler()


def _scored(result, search: Search, out: Path) -> Scored:
    """A Ray Tune result as a row: complete when it ran every epoch, pruned when a scheduler (or the budget)
    stopped it earlier, failed with the reason its trial wrote."""
    number = int((result.config or {})[NUMBER])
    metrics = result.metrics or {}
    params = {field: (result.config or {}).get(field) for field, _ in search.space}
    epochs = metrics.get("epoch")
    if result.error is not None:
        reason = out / "trials" / f"{number:03d}" / "error.txt"
        error = reason.read_text().strip() if reason.exists() else f"on Ray: {type(result.error).__name__}"
        return Scored(number, params, None, "failed", epochs, metrics.get("time_total_s"), error)
    finished = epochs is not None and epochs >= int(search.base.get("epochs") or 0)
    return Scored(
        number=number,
        params=params,
        value=metrics.get(METRIC),
        status="complete" if finished else ("pruned" if epochs is not None else "failed"),
        epochs=epochs,
        seconds=metrics.get("time_total_s"),
        error=None if epochs is not None else "no validation score",
    )


def _progress(log, clock: Clock):
    """A line per trial started, stopped or failed (Ray Tune's own table is off: ``verbose=0``), and the time
    spent saved after each, so an interrupted search counts it."""
    from ray.tune import Callback

    class Progress(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            values = {k: v for k, v in trial.config.items() if k != NUMBER}
            log(f"tune: trial {trial.config[NUMBER]:03d} (on Ray): {_name(values)}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            log(
                f"tune: trial {trial.config[NUMBER]:03d} stopped after epoch {result.get('epoch')} "
                f"(best validation {result.get(METRIC, float('nan')):.2f})"
            )
            clock.save()

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"tune: trial {trial.config[NUMBER]:03d} failed on Ray")
            clock.save()

    return Progress()
