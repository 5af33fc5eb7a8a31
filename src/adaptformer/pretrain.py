"""Supervised pretraining of a small ViT from scratch: how the embedded backbone is made.

The adapter recipe (SGD, frozen backbone) does not suit training from scratch, so the optimisation differs:
AdamW, label smoothing, random crop (4 px reflect padding) + flip. Everything else is the training loop's: the
per-step warm-up + cosine schedule (``train.optim``), the run directory and resume checks (``runtime.rundir``),
atomic training state with RNG streams (``runtime.state``), evaluation (``evaluation``), metrics, device and
precision (CPU or CUDA). The image set is decoded once into a uint8 tensor cache and augmented on batches,
because per-image PIL work would dominate the step time of a 2.7 M-parameter model on two cores.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import Dataset

from .backbones.embedded import CIFAR10_MEAN, CIFAR10_STD
from .data.image import class_folders, list_images
from .data.loading import ShardSampler, make_loader
from .errors import AdaptFormerError
from .evaluation import evaluate
from .runtime.device import pick_device
from .runtime.metrics import MetricsLogger
from .runtime.precision import autocast, resolve_precision
from .runtime.rundir import check_same_settings, prepare_run_dir
from .runtime.state import CHECKPOINT_NAME, load_training_state, restore_rng_state, rng_state, save_training_state
from .train.optim import make_schedule
from .utils.atomic import atomic_write, atomic_write_json
from .utils.options import option
from .utils.progress import progress_bar

RUN_FILES = (CHECKPOINT_NAME, "config.json", "model.safetensors", "model.json", "metrics.jsonl")
RUN_CONTROL = {"out", "threads", "resume", "overwrite", "device"}


@dataclass
class PretrainConfig:
    data: str = option(help="ImageFolder root with train/ and test/ (or val/) class folders")
    out: str = option(help="run directory: checkpoint.pt, model.safetensors, model.json, metrics.jsonl")
    timm_name: str = option("vit_tiny_patch16_224", "timm architecture to train")
    img_size: int = option(32, "input size")
    patch_size: int = option(4, "patch size")
    embed_dim: int = option(192, "width")
    depth: int = option(6, "blocks")
    num_heads: int = option(3, "attention heads")
    epochs: int = option(15, "epochs")
    warmup_epochs: int = option(2, "linear warm-up epochs (per step) before the cosine")
    batch_size: int = option(256, "batch size")
    lr: float = option(1e-3, "AdamW peak learning rate")
    weight_decay: float = option(0.05, "AdamW weight decay (not on norms, biases, tokens, position embeddings)")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing")
    drop_path: float = option(0.1, "stochastic depth rate")
    precision: str = option("auto", "auto | fp32 | bf16 | fp16")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    seed: int = option(0, "random seed")
    threads: int = option(0, "CPU threads (0: torch's default)")
    resume: bool = option(False, "continue the run in --out from its checkpoint")
    overwrite: bool = option(False, "replace the run in --out")

    def model_kwargs(self) -> dict:
        return dict(
            img_size=self.img_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
        )


def load_imagefolder_uint8(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode ``root/<class>/*`` into (N,3,size,size) uint8 + labels; classes sorted like ImageFolder."""
    from PIL import Image

    classes = class_folders(root, "--data")
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in list_images(root / name):
            with Image.open(path) as image:
                image = image.convert("RGB")
                if image.size != (size, size):
                    image = image.resize((size, size), Image.BICUBIC)
                images.append(np.asarray(image, dtype=np.uint8))
            labels.append(index)
    if not images:
        raise AdaptFormerError(f"--data: no images found under {root}")
    array = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return array, torch.tensor(labels, dtype=torch.long), classes


def cached_split(root: Path, size: int, cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    cache = cache_dir / f"cache_{root.name}_{size}.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return blob["images"], blob["labels"], blob["classes"]
    images, labels, classes = load_imagefolder_uint8(root, size)
    atomic_write(cache, lambda tmp: torch.save({"images": images, "labels": labels, "classes": classes}, tmp))
    return images, labels, classes


def augment(batch: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with reflect padding and random horizontal flip, on a uint8 batch."""
    n, _, h, w = batch.shape
    padded = F.pad(batch.float(), (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    out = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def normalize(batch: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR10_STD, device=batch.device).view(1, 3, 1, 1) * 255
    return (batch.float() - mean) / std


class NormalizedImages(Dataset):
    """Cached uint8 images as normalised float tensors: the evaluation input."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return normalize(self.images[index : index + 1])[0], int(self.labels[index])


def pretrain(cfg: PretrainConfig) -> dict:
    """Train, checkpointing atomically after every epoch; ``resume`` continues an interrupted run exactly."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = prepare_run_dir(Path(cfg.out), RUN_FILES, cfg.resume, cfg.overwrite)
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    data = Path(cfg.data)
    test_dir = next((data / n for n in ("test", "val") if (data / n).is_dir()), data / "test")
    train_x, train_y, classes = cached_split(data / "train", cfg.img_size, out)
    test_x, test_y, test_classes = cached_split(test_dir, cfg.img_size, out)
    if test_classes != classes:
        raise AdaptFormerError(f"--data: class folders differ between {data / 'train'} and {test_dir}")

    torch.manual_seed(cfg.seed)
    model = timm.create_model(
        cfg.timm_name, pretrained=False, num_classes=len(classes), drop_path_rate=cfg.drop_path, **cfg.model_kwargs()
    ).to(device)
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay)
    steps_per_epoch = len(train_x) // cfg.batch_size
    if steps_per_epoch < 1:
        raise AdaptFormerError(f"--batch-size {cfg.batch_size}: the training set has only {len(train_x)} images")
    schedule = make_schedule(optimizer, steps_per_epoch * cfg.epochs, steps_per_epoch * cfg.warmup_epochs)
    generator = torch.Generator().manual_seed(cfg.seed)
    start_epoch, elapsed = 0, 0.0
    checkpoint = out / CHECKPOINT_NAME
    if cfg.resume and checkpoint.exists():
        state = load_training_state(checkpoint)
        check_same_settings(state["config"], asdict(cfg), RUN_CONTROL, checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        restore_rng_state(state["rng"])
        start_epoch, elapsed = state["epoch"], state["elapsed"]
        print(f"resumed from {checkpoint} at epoch {start_epoch}")
    atomic_write_json(out / "config.json", asdict(cfg))
    test_loader = make_loader(
        NormalizedImages(test_x, test_y), 500, ShardSampler(len(test_y), 1, 0), 0, cfg.seed, drop_last=False
    )
    logger = MetricsLogger(out, resumed_at=start_epoch * steps_per_epoch if start_epoch else None)
    accuracy = None
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        began = time.time()
        order = torch.randperm(len(train_x), generator=generator)
        bar = progress_bar(range(steps_per_epoch), desc=f"pretrain epoch {epoch + 1}/{cfg.epochs}", unit="step")
        for i in bar:
            step = epoch * steps_per_epoch + i
            schedule.step_update(step)
            index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            inputs = normalize(augment(train_x[index], generator)).to(device, non_blocking=True)
            with autocast(precision, device):
                loss = F.cross_entropy(model(inputs), train_y[index].to(device), label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i % 20 == 0:
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", refresh=False)
                logger.log(step, train_loss=loss.item(), lr=lr)
        elapsed += time.time() - began
        accuracy = evaluate(model, test_loader, device, precision, len(classes))["top1"] / 100
        logger.log((epoch + 1) * steps_per_epoch, epoch=epoch + 1, test_top1=accuracy, train_seconds=elapsed)
        print(f"epoch {epoch + 1}: test top-1 {accuracy:.4f} ({elapsed / 60:.1f} min so far)", flush=True)
        save_training_state(
            checkpoint,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            schedule=schedule.state_dict(),
            epoch=epoch + 1,
            generator=generator.get_state(),
            rng=rng_state(),
            elapsed=elapsed,
            config=asdict(cfg),
        )
        export_weights(model, out, cfg, classes, accuracy, elapsed, epoch + 1, precision)
    logger.close()
    if accuracy is None:  # nothing left to train: re-export what the checkpoint holds
        accuracy = evaluate(model, test_loader, device, precision, len(classes))["top1"] / 100
        export_weights(model, out, cfg, classes, accuracy, elapsed, cfg.epochs, precision)
    return json.loads((out / "model.json").read_text())


def make_adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only."""
    decays = {n: p.ndim > 1 and "pos_embed" not in n and "token" not in n for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    return torch.optim.AdamW(
        [
            {"params": [params[n] for n, d in decays.items() if d], "weight_decay": weight_decay},
            {"params": [params[n] for n, d in decays.items() if not d], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def export_weights(model, out: Path, cfg: PretrainConfig, classes, accuracy, elapsed, epoch, precision) -> None:
    """Write ``model.safetensors`` (timm keys) + ``model.json`` (the card); done every epoch, so an interrupted
    run still leaves usable weights."""
    card = {
        "timm_name": cfg.timm_name,
        "timm_kwargs": cfg.model_kwargs(),
        "classes": classes,
        "test_top1": round(accuracy, 4),
        "epochs_done": epoch,
        "train_minutes": round(elapsed / 60, 1),
        "recipe": {k: v for k, v in asdict(cfg).items() if k not in RUN_CONTROL},
        "precision": precision,
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(weights, str(tmp)))
    atomic_write_json(out / "model.json", card)
