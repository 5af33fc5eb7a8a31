"""The training loop: ``fit(config)`` builds everything from a :class:`TrainConfig` and trains.

Read top to bottom: set-up (process group, run directory, data, model, optimizer, schedule), optional resume,
then epochs of ``train_one_epoch`` + ``evaluate``, writing ``last``/``best`` task files, ``checkpoint.pt``,
``metrics.jsonl``, TensorBoard scalars and ``train.log`` into the run directory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..backbones.timm import create_backbone
from ..data.loading import ResumableSampler, ShardSampler, check_some_readable, make_loader
from ..data.registry import build_split, carve_validation, fold_split, get_dataset, labels_of
from ..data.transforms import InputSpec, eval_transform, train_transform
from ..data.video import VideoTransform
from ..errors import AdaptFormerError
from ..evaluation import evaluate
from ..model import AdaptedModel, BackboneSource, adapt
from ..runtime.distributed import DistInfo, cleanup_distributed, init_distributed, use_global_batchnorm
from ..runtime.metrics import MetricsLogger
from ..runtime.precision import autocast, make_grad_scaler, resolve_precision
from ..runtime.rundir import check_same_settings, prepare_run_dir
from ..runtime.state import CHECKPOINT_NAME, load_training_state, restore_rng_state, rng_state, save_training_state
from ..tasks import save_task
from ..utils.atomic import atomic_write_json, atomic_write_text
from ..utils.hashing import hash_tensors
from ..utils.progress import progress_bar
from .config import RUN_CONTROL, TrainConfig, dump_yaml, parse_fold
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
    best_top1: float = -1.0
    best_epoch: int = -1
    skipped_images: int = 0
    skipped_files: list[str] = field(default_factory=list)  # each unreadable file once, in the order met
    epoch_loss_sum: float = 0.0  # the current epoch's losses so far (a resumed epoch reports the whole mean)
    epoch_batches: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


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


def input_spec(cfg: TrainConfig, backbone: nn.Module, video: bool = False) -> InputSpec:
    """The backbone's preprocessing with the run's overrides: what the task files record."""
    # the small-image recipe trains on whole resized images: evaluation resizes them the same way (unless told)
    resize_mode = cfg.resize_mode or ("squash" if cfg.train_crop == "pad" else None)
    spec = InputSpec.from_model(backbone).replace(
        crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, resize_mode=resize_mode
    )
    # images on a video backbone stay images: the model shows each as a static clip (AdaptedModel.backbone_input)
    return spec.replace(sampling_rate=cfg.sampling_rate) if video else spec.replace(frames=1)


def transforms_for(cfg: TrainConfig, spec: InputSpec):
    """(train, test) transforms: the image recipe, or clip transforms for video datasets."""
    entry = get_dataset(cfg.dataset)
    hflip = cfg.hflip if entry.hflip else 0.0  # e.g. SSv2: "left to right" must not become "right to left"
    if entry.modality == "video":
        train = VideoTransform(spec, True, hflip) if cfg.augment else VideoTransform(spec, False)
        return train, VideoTransform(spec, False, crops=cfg.test_crops)
    return train_transform(spec, hflip, cfg.scale_min, cfg.augment, cfg.train_crop), eval_transform(spec)


def dataset_options(cfg: TrainConfig, frames: int | None = None) -> dict[str, Any]:
    """The keywords the run's dataset builder takes: a benchmark's split, or a video dataset's sampling."""
    entry = get_dataset(cfg.dataset)
    options = {name: getattr(cfg, name) for name in entry.options}
    if entry.modality == "video":  # sample the frames the backbone takes
        options = {**cfg.video_options(), "num_frames": frames or cfg.num_frames}
    return dict(verify=cfg.verify, download=cfg.download, **options)


def training_labels(cfg: TrainConfig) -> list[int]:
    """The label of every training sample the run would use (``--max-train-samples`` applied), read from the
    dataset's label lists without decoding: what ``tune`` sizes its trials by."""
    labels = labels_of(build_split(cfg.dataset, cfg.data_root, True, None, **dataset_options(cfg)).dataset)
    return labels[: cfg.max_train_samples] if cfg.max_train_samples else labels


def build_data(cfg: TrainConfig, spec: InputSpec):
    train_tf, test_tf = transforms_for(cfg, spec)
    common = dataset_options(cfg, spec.frames)
    train = build_split(cfg.dataset, cfg.data_root, True, train_tf, **common)
    test = build_split(cfg.dataset, cfg.data_root, False, test_tf, **common)
    if train.classes != test.classes:
        raise AdaptFormerError(f"--data-root {cfg.data_root}: train and test splits have different classes")
    train_set, test_set = train.dataset, test.dataset
    if cfg.max_train_samples:
        train_set = torch.utils.data.Subset(train_set, range(min(cfg.max_train_samples, len(train_set))))
    if cfg.validation_split or cfg.validation_fold:  # evaluate on held-out training samples, seen as test ones are
        held_out = build_split(cfg.dataset, cfg.data_root, True, test_tf, **common).dataset
        labels = labels_of(train.dataset)[: len(train_set)]
        if cfg.validation_fold:
            kept, held = fold_split(labels, *parse_fold(cfg.validation_fold))
        else:
            kept, held = carve_validation(labels, cfg.validation_split)
        train_set, test_set = torch.utils.data.Subset(train_set, kept), torch.utils.data.Subset(held_out, held)
    if cfg.max_eval_samples:
        test_set = torch.utils.data.Subset(test_set, range(min(cfg.max_eval_samples, len(test_set))))
    return train_set, test_set, train.classes


def evaluated_on(cfg: TrainConfig) -> str:
    """Which split the run's figures are on (summary.json): a held-out part of train, a benchmark's tuning
    split, or the test split."""
    if cfg.validation_split:
        return f"validation ({cfg.validation_split:g} of train)"
    if cfg.validation_fold:
        fold, folds = parse_fold(cfg.validation_fold)
        return f"validation (fold {fold} of {folds} of train)"
    if "benchmark_split" in get_dataset(cfg.dataset).options and cfg.benchmark_split == "tune":
        return "validation (the benchmark's tuning split)"
    return "test"


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


def train_one_epoch(
    model,
    loader,
    optimizer,
    schedule,
    scaler,
    plan: Plan,
    progress: Progress,
    cfg: TrainConfig,
    info: DistInfo,
    precision: str,
    metrics: MetricsLogger,
    on_step=None,
) -> dict[str, float]:
    """One pass over this epoch's remaining batches, ``plan.accumulation`` micro-batches per optimizer step."""
    model.train()
    device = info.device
    remaining = plan.steps_per_epoch - progress.step_in_epoch
    bar = progress_bar(
        total=remaining,
        desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
        unit="step",
        disable=not info.is_main,
        dynamic_ncols=True,
    )
    micro = 0
    optimizer.zero_grad(set_to_none=True)
    for batch in loader:
        if progress.step_in_epoch >= plan.steps_per_epoch:
            break
        if batch.skipped:
            progress.skipped_images += len(batch.skipped)
            for item in batch.skipped:
                listed = progress.skipped_files  # the first MAX_LISTED_SKIPPED, each once (all are logged)
                if len(listed) < MAX_LISTED_SKIPPED and item.path not in listed:
                    listed.append(item.path)
                log.warning(
                    "skipped unreadable file %s (%s); %d skipped so far",
                    item.path,
                    item.reason,
                    progress.skipped_images,
                )
        if batch.inputs is None:
            continue
        if len(batch) == 1 and cfg.batch_size > 1:
            # unreadable files left one sample: the head's BatchNorm cannot normalise a batch of one
            log.warning("skipped a batch left with one readable sample (%s)", batch.ids.tolist())
            continue
        micro += 1
        last_micro = micro % plan.accumulation == 0
        inputs, labels = batch.inputs.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
        # gradients are all-reduced only on the last micro-batch of an accumulation
        sync = contextlib.nullcontext() if last_micro or not info.distributed else model.no_sync()
        with sync:
            with autocast(precision, device):
                loss = F.cross_entropy(model(inputs), labels, label_smoothing=cfg.label_smoothing)
            if not math.isfinite(loss.item()):
                lr = optimizer.param_groups[0]["lr"]
                raise Diverged(f"loss is {loss.item()}", progress.global_step + 1, progress.epoch + 1, lr)
            scaler.scale(loss / plan.accumulation).backward()
        progress.epoch_loss_sum += loss.item()
        progress.epoch_batches += 1
        if not last_micro:
            continue
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        progress.step_in_epoch += 1
        progress.global_step += 1
        schedule.step_update(progress.global_step)
        lr = optimizer.param_groups[0]["lr"]
        bar.update(1)
        mean_loss = progress.epoch_loss_sum / progress.epoch_batches
        # shown at the bar's next refresh (at most every LOG_INTERVAL_S off a terminal), not a write per step
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", skipped=progress.skipped_images, refresh=False)
        if progress.global_step % 10 == 0 or progress.step_in_epoch == plan.steps_per_epoch:
            metrics.log(progress.global_step, train_loss=loss.item(), lr=lr, epoch=progress.epoch + 1)
        if on_step is not None:
            on_step()
    bar.close()
    stats = {"train_loss": progress.epoch_loss_sum / max(progress.epoch_batches, 1)}
    progress.epoch_loss_sum, progress.epoch_batches = 0.0, 0
    return stats


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train as configured; returns the summary (also written to ``summary.json``)."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _fit(cfg, info)
    finally:
        cleanup_distributed()


def _fit(cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    run_dir = prepare_run_dir(cfg.run_dir(), RUN_FILES, cfg.resume, cfg.overwrite, info.is_main)
    if info.distributed:
        torch.distributed.barrier()
    setup_logging(run_dir, info)
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.precision, info.device)

    # the backbone first: its input size / frames / mean / std / crop decide the transforms
    video = get_dataset(cfg.dataset).modality == "video"
    backbone_kwargs = cfg.timm_kwargs(video)
    backbone = create_backbone(cfg.model, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint, **backbone_kwargs)
    spec = input_spec(cfg, backbone, video)
    train_set, test_set, classes = build_data(cfg, spec)
    where = f"--data-root {cfg.data_root}" if cfg.data_root else f"--dataset {cfg.dataset}"
    check_some_readable(train_set, f"{where} (training split)")  # before the seed: no random draw is moved
    check_some_readable(test_set, f"{where} (evaluation split)")
    torch.manual_seed(cfg.seed)  # the same initial adapters / head on every rank
    source = BackboneSource(cfg.model, backbone_kwargs, Path(cfg.checkpoint).name if cfg.checkpoint else None)
    model = adapt(
        backbone, config=cfg.method_config(), classes=classes, task=cfg.task_name or cfg.dataset, source=source
    ).to(info.device)
    plan = plan_steps(cfg, len(train_set), info.world_size)
    optimizer = make_optimizer(model.trainable_parameters(), plan.lr, cfg.momentum, cfg.weight_decay)
    schedule = make_schedule(optimizer, plan.total_steps, plan.warmup_steps, cfg.min_lr)
    scaler = make_grad_scaler(precision, info.device)
    progress, resumed = Progress(), False
    fingerprint = model.backbone_fingerprint()  # the frozen weights do not change: hash them once

    checkpoint_path = run_dir / CHECKPOINT_NAME
    if cfg.resume and checkpoint_path.exists():
        state = load_training_state(checkpoint_path)
        check_resumable(state, cfg, fingerprint, checkpoint_path)
        model.load_task_state(state["tuned"], source=checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        progress, resumed = Progress(**state["progress"]), True
        restore_rng_state(state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0])
        schedule.step_update(progress.global_step)
        log.info("resumed %s at epoch %d, step %d", checkpoint_path, progress.epoch, progress.step_in_epoch)
    else:
        if cfg.resume:  # killed before its first checkpoint: start exactly as a fresh run does
            log.info("--resume: no checkpoint in %s yet, starting from scratch", run_dir)
        torch.manual_seed(cfg.seed + info.rank)  # augmentation / dropout streams differ per rank

    if info.is_main:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        log.info(
            "%s on %s: %d train / %d %s samples, %d classes; %s on %s (%s)",
            cfg.method,
            cfg.dataset,
            len(train_set),
            len(test_set),
            evaluated_on(cfg),
            len(classes),
            cfg.model,
            info.device,
            precision,
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

    # what a step runs: the whole model, or (linear probe on cached features) only the task's head
    step_model: nn.Module = model
    input_ndim = spec.input_ndim
    if cfg.cache_features:
        train_set, test_set, skipped = cache_features(
            model, train_set, test_set, cfg.batch_size, info, precision, cfg.encoded_views, cfg.seed
        )
        for item in skipped:
            log.warning("skipped unreadable file %s (%s)", item.path, item.reason)
        if progress.global_step == 0:
            progress.skipped_images += len(skipped)
        step_model, input_ndim = FeatureHead(model), 2
    if info.distributed:
        use_global_batchnorm(model)
        ddp_model = DistributedDataParallel(
            step_model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    else:
        ddp_model = step_model
    train_forward = torch.compile(ddp_model) if cfg.compile else ddp_model
    eval_forward = torch.compile(step_model) if cfg.compile else step_model
    metrics = MetricsLogger(
        run_dir, enabled=info.is_main, tensorboard=cfg.tensorboard, resumed_at=progress.global_step if resumed else None
    )
    sampler = ResumableSampler(train_set, info.world_size, info.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    test_loader = make_loader(
        test_set,
        cfg.batch_size,
        ShardSampler(len(test_set), info.world_size, info.rank),
        cfg.workers,
        cfg.seed,
        drop_last=False,
    )

    def save_checkpoint() -> None:
        check_finite_weights(model, progress, optimizer.param_groups[0]["lr"])
        rngs = [rng_state()]
        if info.distributed:
            gathered = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if info.is_main:
            save_training_state(
                checkpoint_path,
                tuned=model.task_state_dict(),
                optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict(),
                scaler=scaler.state_dict(),
                rng=rngs,
                progress=progress.__dict__,
                config=cfg.to_dict(),
                fingerprint=fingerprint,
            )

    def maybe_checkpoint_mid_epoch() -> None:
        if (
            cfg.checkpoint_every_steps
            and progress.step_in_epoch % cfg.checkpoint_every_steps == 0
            and progress.step_in_epoch < plan.steps_per_epoch
        ):
            save_checkpoint()

    while progress.epoch < cfg.epochs:
        began = time.time()
        sampler.set_epoch(progress.epoch)
        if cfg.cache_features:
            train_set.set_epoch(progress.epoch)
        sampler.skip = progress.step_in_epoch * plan.accumulation * cfg.batch_size
        loader = make_loader(
            train_set,
            cfg.batch_size,
            sampler,
            cfg.workers,
            cfg.seed + 1000 * progress.epoch + info.rank,
            drop_last=True,
        )
        stats = train_one_epoch(
            train_forward,
            loader,
            optimizer,
            schedule,
            scaler,
            plan,
            progress,
            cfg,
            info,
            precision,
            metrics,
            on_step=maybe_checkpoint_mid_epoch,
        )
        progress.train_seconds += time.time() - began
        progress.epoch += 1
        progress.step_in_epoch = 0
        record = {"epoch": progress.epoch, **stats, "train_seconds": round(progress.train_seconds, 2)}
        check_finite_weights(model, progress, optimizer.param_groups[0]["lr"])  # before any file is written
        if progress.epoch % cfg.eval_every == 0 or progress.epoch == cfg.epochs:
            result = evaluate(
                eval_forward, test_loader, info.device, precision, len(classes), input_ndim, show_progress=info.is_main
            )
            record.update({f"test_{k}": v for k, v in result.items()})
            if result["top1"] > progress.best_top1:
                progress.best_top1, progress.best_epoch = result["top1"], progress.epoch
                if info.is_main:
                    save_task(
                        model,
                        run_dir / "best.safetensors",
                        extra=task_extra(cfg, record),
                        fingerprint=fingerprint,
                        preprocessing=spec,
                    )
            log.info(
                "epoch %d: loss %.4f, top-1 %.2f, top-5 %.2f (best %.2f @ %d)",
                progress.epoch,
                stats["train_loss"],
                result["top1"],
                result["top5"],
                progress.best_top1,
                progress.best_epoch,
            )
        progress.history.append(record)
        metrics.log(progress.global_step, **record)
        if info.is_main:
            save_task(
                model,
                run_dir / "last.safetensors",
                extra=task_extra(cfg, record),
                fingerprint=fingerprint,
                preprocessing=spec,
            )
        save_checkpoint()
    metrics.close()
    summary = summarize(cfg, model, progress, plan, classes, run_dir)
    if info.distributed:
        summary["ranks_in_sync"] = ranks_hold_identical_weights(model, info)
        if not summary["ranks_in_sync"]:
            log.warning("the ranks ended with different weights; check for non-deterministic custom code")
    if info.is_main:
        atomic_write_json(run_dir / "summary.json", summary)
    return summary


def ranks_hold_identical_weights(model: nn.Module, info: DistInfo) -> bool:
    """All-gather a hash of every rank's tuned tensors: DDP must leave them bit-identical."""
    hashes = [None] * info.world_size
    torch.distributed.all_gather_object(hashes, hash_tensors(sorted(model.task_state_dict().items())))
    return len(set(hashes)) == 1


def task_extra(cfg: TrainConfig, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": cfg.dataset,
        "epoch": record["epoch"],
        "top1": record.get("test_top1"),
        "top5": record.get("test_top5"),
    }


def summarize(cfg, model: AdaptedModel, progress: Progress, plan: Plan, classes, run_dir: Path) -> dict[str, Any]:
    report = model.parameter_report()
    last = next((h for h in reversed(progress.history) if "test_top1" in h), {})
    return {
        "dataset": cfg.dataset,
        "method": cfg.method,
        "model": cfg.model,
        "classes": len(classes),
        "epochs": progress.epoch,
        "top1": last.get("test_top1"),
        "top5": last.get("test_top5"),
        "evaluated_on": evaluated_on(cfg),
        "best_top1": progress.best_top1,
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
