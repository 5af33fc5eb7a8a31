"""The training loop: ``fit(config)`` runs a :class:`Trainer` built from a :class:`TrainConfig`.

A run reads top to bottom in :meth:`Trainer.run`: set-up (run directory, backbone, data, model, optimizer,
schedule), resume or a fresh start, the step machinery (cached features, DDP, compile, loaders), then epochs of
:meth:`Trainer.train_epoch` and :meth:`Trainer.end_epoch` (evaluate, keep the best, write ``last``/``best`` task
files and ``checkpoint.pt``), and the summary. Files in the run directory: ``metrics.jsonl``, TensorBoard scalars,
``train.log``, ``config.yaml`` and ``summary.json``. What the task predicts and how it is scored (cross-entropy
and top-1, or binary cross-entropy and mAP) is the dataset's objective (``objectives.py``), not a branch here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..adapted.model import AdaptedModel, BackboneSource, adapt
from ..backbones.timm import create_backbone
from ..data.loading import Batch, ResumableSampler, ShardSampler, check_some_readable, make_loader
from ..data.registry import get_dataset
from ..errors import AdaptFormerError
from ..evaluation import evaluate
from ..objectives import Objective, get_objective
from ..runtime.distributed import DistInfo, cleanup_distributed, init_distributed, use_global_batchnorm
from ..runtime.metrics import MetricsLogger
from ..runtime.precision import autocast, make_grad_scaler, resolve_precision
from ..runtime.rundir import check_same_settings, prepare_run_dir
from ..runtime.state import CHECKPOINT_NAME, load_training_state, restore_rng_state, rng_state, save_training_state
from ..tasks import save_task
from ..utils.atomic import atomic_write_json, atomic_write_text
from ..utils.hashing import hash_tensors
from ..utils.progress import progress_bar
from .config import RUN_CONTROL, TrainConfig, dump_yaml
from .data import build_data, evaluated_on, input_spec
from .features import FeatureHead, cache_features
from .optim import make_optimizer, make_schedule, scaled_lr

RUN_FILES = (
    "config.yaml",
    CHECKPOINT_NAME,
    "metrics.jsonl",
    "train.log",
    "last.safetensors",
    "last.json",
    "best.safetensors",
    "best.json",
    "summary.json",
    "tensorboard",
)
log = logging.getLogger("adaptformer.train")


@dataclass
class Progress:
    """Where training stands; saved in checkpoints."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0
    best_score: float = -1.0  # the objective's primary score (top-1 or mAP) at the best evaluation
    best_epoch: int = -1
    skipped_images: int = 0
    skipped_files: list[str] = field(default_factory=list)  # each unreadable file once, in the order met
    epoch_loss_sum: float = 0.0  # the current epoch's losses so far (a resumed epoch reports the whole mean)
    epoch_batches: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_details: dict[str, Any] = field(default_factory=dict)  # the last evaluation's lists (per-class AP)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        state = dict(state)
        if "best_top1" in state:  # checkpoints written before objectives named it
            state["best_score"] = state.pop("best_top1")
        return cls(**state)


@dataclass
class Plan:
    accumulation: int
    effective_batch: int
    lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def plan_steps(cfg: TrainConfig, train_size: int, world_size: int) -> Plan:
    per_step = cfg.batch_size * world_size
    effective = cfg.effective_batch or per_step
    if effective % per_step:
        raise AdaptFormerError(
            f"--effective-batch {effective} is not a multiple of --batch-size {cfg.batch_size} x {world_size} "
            f"process(es) = {per_step}"
        )
    accumulation = effective // per_step
    steps = train_size // effective
    if steps < 1:
        raise AdaptFormerError(
            f"--effective-batch {effective}: the training set has only {train_size} images; lower the batch"
        )
    lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.blr, effective)
    return Plan(accumulation, effective, lr, steps, steps * cfg.epochs, round(steps * cfg.warmup))


def setup_logging(run_dir: Path, info: DistInfo) -> None:
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    if not info.is_main:
        log.addHandler(logging.NullHandler())
        return
    file_handler = logging.FileHandler(run_dir / "train.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(file_handler)
    log.addHandler(console)


MAX_LISTED_SKIPPED = 1000  # unreadable files listed in summary.json (bounded: a broken disk may hold millions)


class Diverged(AdaptFormerError):
    """A non-finite loss or weight: the run stops before anything is saved, so the files keep the last good state."""

    def __init__(self, what: str, step: int, epoch: int, lr: float):
        where = f"step {step} (epoch {epoch})"
        super().__init__(
            f"training diverged: {what} at {where}; stopped without saving, so the run's checkpoint and task files "
            "keep the last good state; "
            f"rerun with a lower learning rate, e.g. --lr {lr / 10:.3g} (with --overwrite or another --out)"
        )


def check_finite_weights(model: nn.Module, progress: Progress, lr: float) -> None:
    """Refuse to save weights an overflowing step has made NaN/inf (the next loss would only say so later)."""
    if any(not bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad):
        # the step that made them so is the last one taken, in the epoch it was taken in
        epoch = progress.epoch + (1 if progress.step_in_epoch else 0)
        raise Diverged("a trained weight is NaN or inf", progress.global_step, epoch, lr)


def fit(cfg: TrainConfig, on_evaluated: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train as configured; returns the summary (also written to ``summary.json``). ``on_evaluated(epoch,
    score)`` is called after each evaluated epoch, once its files are written (a search prunes a trial there by
    raising)."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        trainer = Trainer(cfg, info)
        trainer.on_evaluated = on_evaluated
        return trainer.run()
    finally:
        cleanup_distributed()


class Trainer:
    """One training run on one process (of ``info.world_size``)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.progress = Progress()
        self.resumed = False
        self.on_evaluated: Callable[[int, float], None] | None = None
        self.objective: Objective = get_objective(get_dataset(cfg.dataset).objective)

    def run(self) -> dict[str, Any]:
        self.set_up()
        self.resume_or_start()
        self.log_start()
        self.prepare_steps()
        while self.progress.epoch < self.cfg.epochs:
            self.end_epoch(self.train_epoch())
        return self.finish()

    # ---- set-up -------------------------------------------------------------------------------------------
    def set_up(self) -> None:
        cfg, info = self.cfg, self.info
        self.run_dir = prepare_run_dir(cfg.run_dir(), RUN_FILES, cfg.resume, cfg.overwrite, info.is_main)
        if info.distributed:
            torch.distributed.barrier()
        setup_logging(self.run_dir, info)
        torch.manual_seed(cfg.seed)
        self.precision = resolve_precision(cfg.precision, info.device)

        # the backbone first: its input size / frames / mean / std / crop decide the transforms
        video = get_dataset(cfg.dataset).modality == "video"
        backbone_kwargs = cfg.timm_kwargs(video)
        backbone = create_backbone(cfg.model, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint, **backbone_kwargs)
        self.spec = input_spec(cfg, backbone, video)
        self.train_set, self.test_set, self.classes = build_data(cfg, self.spec)
        where = f"--data-root {cfg.data_root}" if cfg.data_root else f"--dataset {cfg.dataset}"
        check_some_readable(self.train_set, f"{where} (training split)")  # before the seed: no random draw is moved
        check_some_readable(self.test_set, f"{where} (evaluation split)")
        torch.manual_seed(cfg.seed)  # the same initial adapters / head on every rank
        source = BackboneSource(cfg.model, backbone_kwargs, Path(cfg.checkpoint).name if cfg.checkpoint else None)
        self.model = adapt(
            backbone,
            config=cfg.method_config,
            classes=self.classes,
            task=cfg.task_name or cfg.dataset,
            source=source,
            objective=self.objective.name,
        ).to(info.device)
        self.model.set_grad_checkpointing(cfg.grad_checkpointing)
        self.plan = plan_steps(cfg, len(self.train_set), info.world_size)
        self.optimizer = make_optimizer(self.model.trainable_parameters(), self.plan.lr, cfg.momentum, cfg.weight_decay)
        self.schedule = make_schedule(self.optimizer, self.plan.total_steps, self.plan.warmup_steps, cfg.min_lr)
        self.scaler = make_grad_scaler(self.precision, info.device)
        self.fingerprint = self.model.backbone_fingerprint()  # the frozen weights do not change: hash them once
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME

    def resume_or_start(self) -> None:
        cfg, path = self.cfg, self.checkpoint_path
        if cfg.resume and path.exists():
            state = load_training_state(path)
            check_resumable(state, cfg, self.fingerprint, path)
            self.model.load_task_state(state["tuned"], source=path)
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.scaler.load_state_dict(state["scaler"])
            self.progress, self.resumed = Progress.from_state(state["progress"]), True
            rank = self.info.rank
            restore_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
            self.schedule.step_update(self.progress.global_step)
            log.info("resumed %s at epoch %d, step %d", path, self.progress.epoch, self.progress.step_in_epoch)
            return
        if cfg.resume:  # killed before its first checkpoint: start exactly as a fresh run does
            log.info("--resume: no checkpoint in %s yet, starting from scratch", self.run_dir)
        torch.manual_seed(cfg.seed + self.info.rank)  # augmentation / dropout streams differ per rank

    def log_start(self) -> None:
        cfg, info, plan = self.cfg, self.info, self.plan
        if not info.is_main:
            return
        atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
        kind = "" if self.objective.name == "classification" else f" ({self.objective.name}, {self.objective.metric})"
        log.info(
            "%s on %s: %d train / %d %s samples, %d classes%s; %s on %s (%s)",
            cfg.method,
            cfg.dataset,
            len(self.train_set),
            len(self.test_set),
            evaluated_on(cfg),
            len(self.classes),
            kind,
            cfg.model,
            info.device,
            self.precision,
        )
        log.info(
            "effective batch %d = %d x %d accumulation x %d process(es); lr %.4g; %d steps/epoch",
            plan.effective_batch,
            cfg.batch_size,
            plan.accumulation,
            info.world_size,
            plan.lr,
            plan.steps_per_epoch,
        )

    def prepare_steps(self) -> None:
        """What a step runs (the whole model, or on cached features only the head), wrapped for DDP and compile,
        and the loaders' samplers."""
        cfg, info = self.cfg, self.info
        step_model: nn.Module = self.model
        self.input_ndim = self.spec.input_ndim
        if cfg.cache_features:
            self.train_set, self.test_set, skipped = cache_features(
                self.model,
                self.train_set,
                self.test_set,
                cfg.batch_size,
                info,
                self.precision,
                cfg.encoded_views,
                cfg.seed,
            )
            for item in skipped:
                log.warning("skipped unreadable file %s (%s)", item.path, item.reason)
            if self.progress.global_step == 0:
                self.progress.skipped_images += len(skipped)
            step_model, self.input_ndim = FeatureHead(self.model), 2
        ddp_model = step_model
        if info.distributed:
            use_global_batchnorm(self.model)
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            ddp_model = DistributedDataParallel(step_model, device_ids=device_ids)
        self.train_forward = torch.compile(ddp_model) if cfg.compile else ddp_model
        self.eval_forward = torch.compile(step_model) if cfg.compile else step_model
        resumed_at = self.progress.global_step if self.resumed else None
        self.metrics = MetricsLogger(
            self.run_dir, enabled=info.is_main, tensorboard=cfg.tensorboard, resumed_at=resumed_at
        )
        self.sampler = ResumableSampler(
            self.train_set, info.world_size, info.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        shard = ShardSampler(len(self.test_set), info.world_size, info.rank)
        self.test_loader = make_loader(self.test_set, cfg.batch_size, shard, cfg.workers, cfg.seed, drop_last=False)

    # ---- an epoch -----------------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """This epoch's remaining batches, ``plan.accumulation`` micro-batches per optimizer step."""
        cfg, progress, plan = self.cfg, self.progress, self.plan
        began = time.time()
        self.sampler.set_epoch(progress.epoch)
        if cfg.cache_features:
            self.train_set.set_epoch(progress.epoch)
        self.sampler.skip = progress.step_in_epoch * plan.accumulation * cfg.batch_size
        seed = cfg.seed + 1000 * progress.epoch + self.info.rank
        loader = make_loader(self.train_set, cfg.batch_size, self.sampler, cfg.workers, seed, drop_last=True)
        self.train_forward.train()
        self.bar = progress_bar(
            total=plan.steps_per_epoch - progress.step_in_epoch,
            desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=not self.info.is_main,
            dynamic_ncols=True,
        )
        micro = 0
        self.optimizer.zero_grad(set_to_none=True)
        for batch in loader:
            if progress.step_in_epoch >= plan.steps_per_epoch:
                break
            if not self.usable(batch):
                continue
            micro += 1
            self.forward_backward(batch, last_micro=micro % plan.accumulation == 0)
            if micro % plan.accumulation == 0:
                self.optimizer_step()
        self.bar.close()
        stats = {"train_loss": progress.epoch_loss_sum / max(progress.epoch_batches, 1)}
        progress.epoch_loss_sum, progress.epoch_batches = 0.0, 0
        progress.train_seconds += time.time() - began
        return stats

    def usable(self, batch: Batch) -> bool:
        """Count and log the batch's unreadable files; False when nothing (or one sample) is left to train on."""
        progress = self.progress
        for item in batch.skipped:
            progress.skipped_images += 1
            listed = progress.skipped_files  # the first MAX_LISTED_SKIPPED, each once (all are logged)
            if len(listed) < MAX_LISTED_SKIPPED and item.path not in listed:
                listed.append(item.path)
            log.warning(
                "skipped unreadable file %s (%s); %d skipped so far", item.path, item.reason, progress.skipped_images
            )
        if batch.inputs is None:
            return False
        if len(batch) == 1 and self.cfg.batch_size > 1:
            # unreadable files left one sample: the head's BatchNorm cannot normalise a batch of one
            log.warning("skipped a batch left with one readable sample (%s)", batch.ids.tolist())
            return False
        return True

    def forward_backward(self, batch: Batch, last_micro: bool) -> None:
        device, progress = self.info.device, self.progress
        inputs = batch.inputs.to(device, non_blocking=True)
        targets = batch.labels.to(device, non_blocking=True)
        # gradients are all-reduced only on the last micro-batch of an accumulation
        sync = contextlib.nullcontext() if last_micro or not self.info.distributed else self.train_forward.no_sync()
        with sync:
            with autocast(self.precision, device):
                loss = self.objective.loss(self.train_forward(inputs), targets, self.cfg.label_smoothing)
            if not math.isfinite(loss.item()):
                raise Diverged(f"loss is {loss.item()}", progress.global_step + 1, progress.epoch + 1, self.lr)
            self.scaler.scale(loss / self.plan.accumulation).backward()
        self.last_loss = loss.item()
        progress.epoch_loss_sum += self.last_loss
        progress.epoch_batches += 1

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def optimizer_step(self) -> None:
        progress, plan = self.progress, self.plan
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        progress.step_in_epoch += 1
        progress.global_step += 1
        self.schedule.step_update(progress.global_step)
        self.bar.update(1)
        mean_loss = progress.epoch_loss_sum / progress.epoch_batches
        # shown at the bar's next refresh (at most every LOG_INTERVAL_S off a terminal), not a write per step
        self.bar.set_postfix(
            loss=f"{mean_loss:.4f}", lr=f"{self.lr:.2e}", skipped=progress.skipped_images, refresh=False
        )
        if progress.global_step % 10 == 0 or progress.step_in_epoch == plan.steps_per_epoch:
            self.metrics.log(progress.global_step, train_loss=self.last_loss, lr=self.lr, epoch=progress.epoch + 1)
        every = self.cfg.checkpoint_every_steps
        if every and progress.step_in_epoch % every == 0 and progress.step_in_epoch < plan.steps_per_epoch:
            self.save_checkpoint()

    # ---- the end of an epoch: evaluate, keep the best, save ---------------------------------------------------
    def end_epoch(self, stats: dict[str, float]) -> None:
        cfg, progress = self.cfg, self.progress
        progress.epoch += 1
        progress.step_in_epoch = 0
        record = {"epoch": progress.epoch, **stats, "train_seconds": round(progress.train_seconds, 2)}
        check_finite_weights(self.model, progress, self.lr)  # before any file is written
        evaluated = progress.epoch % cfg.eval_every == 0 or progress.epoch == cfg.epochs
        if evaluated:
            self.evaluate_into(record)
        progress.history.append(record)
        self.metrics.log(progress.global_step, **record)
        self.save_task_file("last", record)
        self.save_checkpoint()
        score = record.get(f"test_{self.objective.metric}")
        if evaluated and self.on_evaluated is not None and score is not None:
            self.on_evaluated(progress.epoch, float(score))

    def evaluate_into(self, record: dict[str, Any]) -> None:
        """Score the evaluation split into ``record`` (scalars; lists such as per-class AP go to the summary) and
        write ``best`` when the primary score improved."""
        progress, metric = self.progress, self.objective.metric
        result = evaluate(
            self.eval_forward,
            self.test_loader,
            self.info.device,
            self.precision,
            len(self.classes),
            self.input_ndim,
            show_progress=self.info.is_main,
            objective=self.objective,
        )
        record.update({f"test_{k}": v for k, v in result.items() if not isinstance(v, list)})
        progress.last_details = {k: v for k, v in result.items() if isinstance(v, list)}
        score = result[metric] if result[metric] is not None else -1.0
        if score > progress.best_score:
            progress.best_score, progress.best_epoch = score, progress.epoch
            self.save_task_file("best", record)
        log.info(
            "epoch %d: loss %.4f, %s (best %s %.2f @ %d)",
            progress.epoch,
            record["train_loss"],
            self.objective.describe(result),
            metric,
            progress.best_score,
            progress.best_epoch,
        )

    def save_task_file(self, which: str, record: dict[str, Any]) -> None:
        if self.info.is_main:
            save_task(
                self.model,
                self.run_dir / f"{which}.safetensors",
                extra=task_extra(self.cfg, record, self.objective),
                fingerprint=self.fingerprint,
                preprocessing=self.spec,
            )

    def save_checkpoint(self) -> None:
        check_finite_weights(self.model, self.progress, self.lr)
        rngs = [rng_state()]
        if self.info.distributed:
            gathered = [None] * self.info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if self.info.is_main:
            save_training_state(
                self.checkpoint_path,
                tuned=self.model.task_state_dict(),
                optimizer=self.optimizer.state_dict(),
                schedule=self.schedule.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=rngs,
                progress=self.progress.__dict__,
                config=self.cfg.to_dict(),
                fingerprint=self.fingerprint,
            )

    # ---- the end of the run -------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        self.metrics.close()
        summary = summarize(self.cfg, self.model, self.progress, self.plan, self.classes, self.run_dir, self.objective)
        if self.info.distributed:
            summary["ranks_in_sync"] = ranks_hold_identical_weights(self.model, self.info)
            if not summary["ranks_in_sync"]:
                log.warning("the ranks ended with different weights; check for non-deterministic custom code")
        if self.info.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
        return summary


def ranks_hold_identical_weights(model: nn.Module, info: DistInfo) -> bool:
    """All-gather a hash of every rank's tuned tensors: DDP must leave them bit-identical."""
    hashes = [None] * info.world_size
    torch.distributed.all_gather_object(hashes, hash_tensors(sorted(model.task_state_dict().items())))
    return len(set(hashes)) == 1


def task_extra(cfg: TrainConfig, record: dict[str, Any], objective: Objective) -> dict[str, Any]:
    return {
        "dataset": cfg.dataset,
        "epoch": record["epoch"],
        **{name: record.get(f"test_{name}") for name in objective.reported},
    }


def summarize(
    cfg, model: AdaptedModel, progress: Progress, plan: Plan, classes, run_dir: Path, objective: Objective
) -> dict[str, Any]:
    """``summary.json``: the objective's scores at the last evaluation (``top1``/``top5``, or ``mAP`` and the
    per-class AP), ``metric`` naming the primary one and ``best_<metric>`` its best value, with the run's facts."""
    report = model.parameter_report()
    last = next((h for h in reversed(progress.history) if f"test_{objective.metric}" in h), {})
    scores = {name: last.get(f"test_{name}") for name in objective.reported}
    return {
        "dataset": cfg.dataset,
        "method": cfg.method,
        "model": cfg.model,
        "classes": len(classes),
        "objective": objective.name,
        "metric": objective.metric,
        "epochs": progress.epoch,
        **scores,
        **(progress.last_details if last else {}),
        "evaluated_on": evaluated_on(cfg),
        f"best_{objective.metric}": progress.best_score,
        "best_epoch": progress.best_epoch,
        "trainable": report.trainable,
        "total": report.total,
        "trainable_percent": round(report.percent, 4),
        "train_seconds": round(progress.train_seconds, 2),
        "lr": plan.lr,
        "effective_batch": plan.effective_batch,
        "skipped_images": progress.skipped_images,
        "skipped_files": progress.skipped_files,
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "run_dir": str(run_dir),
    }


def peak_memory_mb() -> float:
    """Peak memory of this process: the GPU's allocations on CUDA, else the peak resident set (Linux: KiB)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_resumable(state: dict[str, Any], cfg: TrainConfig, fingerprint: str | None, path: Path) -> None:
    check_same_settings(state.get("config", {}), cfg.to_dict(), RUN_CONTROL, path)
    if state.get("fingerprint") != fingerprint:
        raise AdaptFormerError(f"--resume: {path} was trained on other backbone weights")
