"""The training loop: ``fit(config)`` builds everything from a :class:`TrainConfig` and trains.

Read top to bottom: set-up (process group, run directory, data, model, optimizer, schedule), optional resume,
then epochs of ``train_one_epoch`` + ``evaluate``, writing ``last``/``best`` task files, ``checkpoint.pt``,
``metrics.jsonl``, TensorBoard scalars and ``train.log`` into the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..adapters.methods import adapt
from ..backbones.timm import create_backbone
from ..data.image import build_image_split
from ..data.loading import ResumableSampler, ShardSampler, make_loader
from ..data.transforms import InputSpec, eval_transform, train_transform
from ..errors import AdaptFormerError
from ..tasks import backbone_fingerprint, load_tuned_tensors, save_task, tuned_state_dict
from ..utils.atomic import atomic_write_text
from ..utils.hashing import hash_tensors
from .config import RUN_CONTROL, TrainConfig, dump_yaml
from .distributed import DistInfo, all_reduce_sum, cleanup_distributed, init_distributed, use_global_batchnorm
from .metrics import MetricsLogger
from .optim import make_optimizer, make_schedule, scaled_lr
from .precision import autocast, make_grad_scaler, resolve_precision
from .state import CHECKPOINT_NAME, load_training_state, restore_rng_state, rng_state, save_training_state

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
    return Plan(accumulation, effective, lr, steps, steps * cfg.epochs, round(steps * cfg.warmup_epochs))


def prepare_run_dir(cfg: TrainConfig, info: DistInfo) -> Path:
    """Refuse to mix two runs in one directory unless told to resume or overwrite."""
    run_dir = cfg.run_dir()
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not cfg.resume and not cfg.overwrite:  # every rank refuses, so none waits for the others
        raise AdaptFormerError(
            f"--out {run_dir}: already holds a run ({', '.join(existing[:3])}); "
            "pass --resume to continue it or --overwrite to replace it"
        )
    if info.is_main and existing and cfg.overwrite:
        for name in existing:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


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


def build_data(cfg: TrainConfig, spec: InputSpec):
    train = build_image_split(
        cfg.dataset,
        cfg.data_root,
        True,
        train_transform(spec, cfg.hflip, cfg.scale_min, cfg.augment),
        verify=cfg.verify,
        download=cfg.download,
    )
    test = build_image_split(
        cfg.dataset, cfg.data_root, False, eval_transform(spec), verify=cfg.verify, download=cfg.download
    )
    if train.classes != test.classes:
        raise AdaptFormerError(f"--data-root {cfg.data_root}: train and test splits have different classes")
    train_set, test_set = train.dataset, test.dataset
    if cfg.max_train_samples:
        train_set = torch.utils.data.Subset(train_set, range(min(cfg.max_train_samples, len(train_set))))
    if cfg.max_eval_samples:
        test_set = torch.utils.data.Subset(test_set, range(min(cfg.max_eval_samples, len(test_set))))
    return train_set, test_set, train.classes


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device: torch.device, precision: str, num_classes: int, show_progress: bool = False
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean loss, summed over every rank's shard."""
    model.eval()
    k = min(5, num_classes)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@k, loss sum, count
    for batch in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not show_progress):
        if batch.images is None:
            continue
        images, labels = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
        with autocast(precision, device):
            logits = model(images)
        logits = logits.float()
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        totals += torch.tensor(
            [
                hits[:, 0].sum().item(),
                hits.any(1).sum().item(),
                F.cross_entropy(logits, labels, reduction="sum").item(),
                len(labels),
            ],
            dtype=torch.float64,
            device=device,
        )
    correct1, correctk, loss, count = all_reduce_sum(totals).tolist()
    count = max(count, 1)
    return {"top1": 100 * correct1 / count, "top5": 100 * correctk / count, "loss": loss / count, "samples": int(count)}


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
    bar = tqdm(
        total=remaining,
        desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
        unit="step",
        disable=not info.is_main,
        dynamic_ncols=True,
    )
    micro, loss_sum, seen = 0, 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    for batch in loader:
        if progress.step_in_epoch >= plan.steps_per_epoch:
            break
        if batch.skipped:
            progress.skipped_images += len(batch.skipped)
            for item in batch.skipped:
                log.warning(
                    "skipped unreadable image %s (%s); %d skipped so far",
                    item.path,
                    item.reason,
                    progress.skipped_images,
                )
        if batch.images is None:
            continue
        micro += 1
        last_micro = micro % plan.accumulation == 0
        images, labels = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
        # gradients are all-reduced only on the last micro-batch of an accumulation
        sync = contextlib.nullcontext() if last_micro or not info.distributed else model.no_sync()
        with sync:
            with autocast(precision, device):
                loss = F.cross_entropy(model(images), labels, label_smoothing=cfg.label_smoothing)
            if not math.isfinite(loss.item()):
                raise AdaptFormerError(f"loss is {loss.item()} at step {progress.global_step}; lower --lr/--blr")
            scaler.scale(loss / plan.accumulation).backward()
        loss_sum += loss.item()
        seen += 1
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
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{lr:.2e}", skipped=progress.skipped_images)
        if progress.global_step % 10 == 0 or progress.step_in_epoch == plan.steps_per_epoch:
            metrics.log(progress.global_step, train_loss=loss.item(), lr=lr, epoch=progress.epoch + 1)
        if on_step is not None:
            on_step()
    bar.close()
    return {"train_loss": loss_sum / max(seen, 1)}


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train as configured; returns the summary (also written to ``summary.json``)."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _fit(cfg, info)
    finally:
        cleanup_distributed()


def _fit(cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    run_dir = prepare_run_dir(cfg, info)
    if info.distributed:
        torch.distributed.barrier()
    setup_logging(run_dir, info)
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.precision, info.device)

    # the backbone first: its input size / mean / std decide the transforms
    backbone = create_backbone(cfg.model, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint, **cfg.timm_kwargs())
    spec = InputSpec.from_model(backbone)
    if cfg.crop_pct:
        spec = dataclasses.replace(spec, crop_pct=cfg.crop_pct)
    train_set, test_set, classes = build_data(cfg, spec)
    torch.manual_seed(cfg.seed)  # the same initial adapters / head on every rank
    model = adapt(backbone, num_classes=len(classes), config=cfg.adapt_config()).to(info.device)
    plan = plan_steps(cfg, len(train_set), info.world_size)
    optimizer = make_optimizer(model, plan.lr, cfg.momentum, cfg.weight_decay)
    schedule = make_schedule(optimizer, plan.total_steps, plan.warmup_steps, cfg.min_lr)
    scaler = make_grad_scaler(precision, info.device)
    progress = Progress()

    checkpoint_path = run_dir / CHECKPOINT_NAME
    if cfg.resume and checkpoint_path.exists():
        state = load_training_state(checkpoint_path)
        check_resumable(state, cfg, model, checkpoint_path)
        load_tuned_tensors(model, state["tuned"], checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
        restore_rng_state(state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0])
        schedule.step_update(progress.global_step)
        log.info("resumed %s at epoch %d, step %d", checkpoint_path, progress.epoch, progress.step_in_epoch)
    elif cfg.resume:
        log.info("--resume: no checkpoint in %s yet, starting from scratch", run_dir)
    else:
        torch.manual_seed(cfg.seed + info.rank)  # augmentation / dropout streams differ per rank

    if info.is_main:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        log.info(
            "%s on %s: %d train / %d test images, %d classes; %s on %s (%s)",
            cfg.method,
            cfg.dataset,
            len(train_set),
            len(test_set),
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
    if info.distributed:
        use_global_batchnorm(model)
        ddp_model = DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    else:
        ddp_model = model
    metrics = MetricsLogger(run_dir, enabled=info.is_main, tensorboard=cfg.tensorboard)
    sampler = ResumableSampler(train_set, info.world_size, info.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    test_loader = make_loader(
        test_set,
        cfg.batch_size,
        ShardSampler(len(test_set), info.world_size, info.rank),
        cfg.workers,
        cfg.seed,
        drop_last=False,
    )
    fingerprint = backbone_fingerprint(model)

    def save_checkpoint() -> None:
        rngs = [rng_state()]
        if info.distributed:
            gathered = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if info.is_main:
            save_training_state(
                checkpoint_path,
                tuned=tuned_state_dict(model),
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
            ddp_model,
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
        if progress.epoch % cfg.eval_every == 0 or progress.epoch == cfg.epochs:
            result = evaluate(model, test_loader, info.device, precision, len(classes), show_progress=info.is_main)
            record.update({f"test_{k}": v for k, v in result.items()})
            if result["top1"] > progress.best_top1:
                progress.best_top1, progress.best_epoch = result["top1"], progress.epoch
                if info.is_main:
                    save_task(
                        model,
                        run_dir / "best.safetensors",
                        classes,
                        extra=task_extra(cfg, record),
                        fingerprint=fingerprint,
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
                model, run_dir / "last.safetensors", classes, extra=task_extra(cfg, record), fingerprint=fingerprint
            )
        save_checkpoint()
    metrics.close()
    summary = summarize(cfg, model, progress, plan, classes, run_dir)
    if info.distributed:
        summary["ranks_in_sync"] = ranks_hold_identical_weights(model, info)
        if not summary["ranks_in_sync"]:
            log.warning("the ranks ended with different weights; check for non-deterministic custom code")
    if info.is_main:
        from ..utils.atomic import atomic_write_json

        atomic_write_json(run_dir / "summary.json", summary)
    return summary


def ranks_hold_identical_weights(model: nn.Module, info: DistInfo) -> bool:
    """All-gather a hash of every rank's tuned tensors: DDP must leave them bit-identical."""
    hashes = [None] * info.world_size
    torch.distributed.all_gather_object(hashes, hash_tensors(sorted(tuned_state_dict(model).items())))
    return len(set(hashes)) == 1


def task_extra(cfg: TrainConfig, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": cfg.dataset,
        "epoch": record["epoch"],
        "top1": record.get("test_top1"),
        "top5": record.get("test_top5"),
    }


def summarize(cfg, model, progress: Progress, plan: Plan, classes, run_dir: Path) -> dict[str, Any]:
    from ..adapters.report import parameter_report

    report = parameter_report(model)
    last = next((h for h in reversed(progress.history) if "test_top1" in h), {})
    return {
        "dataset": cfg.dataset,
        "method": cfg.method,
        "model": cfg.model,
        "classes": len(classes),
        "epochs": progress.epoch,
        "top1": last.get("test_top1"),
        "top5": last.get("test_top5"),
        "best_top1": progress.best_top1,
        "best_epoch": progress.best_epoch,
        "trainable": report.trainable,
        "total": report.total,
        "trainable_percent": round(report.percent, 4),
        "train_seconds": round(progress.train_seconds, 2),
        "lr": plan.lr,
        "effective_batch": plan.effective_batch,
        "skipped_images": progress.skipped_images,
        "run_dir": str(run_dir),
    }


def check_resumable(state: dict[str, Any], cfg: TrainConfig, model: nn.Module, path: Path) -> None:
    saved = state.get("config", {})
    changed = [k for k, v in cfg.to_dict().items() if k not in RUN_CONTROL and saved.get(k) != v]
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in changed[:3])
        raise AdaptFormerError(f"--resume: {path} was trained with other settings ({details})")
    if state.get("fingerprint") != backbone_fingerprint(model):
        raise AdaptFormerError(f"--resume: {path} was trained on other backbone weights")
