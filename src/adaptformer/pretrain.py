"""Supervised pretraining of a small ViT from scratch: how the embedded backbone is made.

The adapter recipe (SGD, frozen backbone) does not suit training from scratch, so this module has its own:
AdamW, linear warm-up + cosine, label smoothing, random crop (4 px reflect padding) + flip. The whole image set
is decoded once into a uint8 tensor cache, and augmentation runs on batches, because per-image PIL work would
dominate the step time of a 2.7 M-parameter model on two cores.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from .backbones.embedded import CIFAR10_MEAN, CIFAR10_STD
from .data.image import class_folders, list_images
from .errors import AdaptFormerError
from .train.metrics import MetricsLogger
from .train.precision import autocast, resolve_precision
from .utils.atomic import atomic_write, atomic_write_json


@dataclass
class PretrainConfig:
    data: str
    out: str
    timm_name: str = "vit_tiny_patch16_224"
    img_size: int = 32
    patch_size: int = 4
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    epochs: int = 15
    warmup_epochs: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    precision: str = "auto"
    seed: int = 0
    threads: int = 0  # 0: torch's default

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
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1) * 255
    return (batch.float() - mean) / std


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate_uint8(model, images, labels, precision, batch_size=500) -> float:
    model.eval()
    correct = 0
    device = torch.device("cpu")
    for start in range(0, len(images), batch_size):
        with autocast(precision, device):
            logits = model(normalize(images[start : start + batch_size]))
        correct += (logits.argmax(1) == labels[start : start + batch_size]).sum().item()
    return correct / len(images)


def pretrain(cfg: PretrainConfig, resume: bool = True) -> dict:
    """Train, checkpointing atomically after every epoch; resumes from ``out/checkpoint.pt`` if present."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(cfg.data)
    test_dir = next((data / n for n in ("test", "val") if (data / n).is_dir()), data / "test")
    train_x, train_y, classes = cached_split(data / "train", cfg.img_size, out)
    test_x, test_y, test_classes = cached_split(test_dir, cfg.img_size, out)
    if test_classes != classes:
        raise AdaptFormerError(f"--data: class folders differ between {data / 'train'} and {test_dir}")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = timm.create_model(
        cfg.timm_name, pretrained=False, num_classes=len(classes), drop_path_rate=cfg.drop_path, **cfg.model_kwargs()
    )
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "token" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "token" not in n)
    ]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    precision = resolve_precision(cfg.precision, torch.device("cpu"))
    steps_per_epoch = len(train_x) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = steps_per_epoch * cfg.warmup_epochs
    generator = torch.Generator().manual_seed(cfg.seed)
    start_epoch, elapsed = 0, 0.0
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.exists():
        saved = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
        changed = [k for k, v in asdict(cfg).items() if k not in ("out", "threads") and saved.get(k, v) != v]
        if changed:
            raise AdaptFormerError(
                f"--out {out}: holds a pretraining run with other settings ({', '.join(changed)}); "
                "use another --out or --no-resume"
            )
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, elapsed = state["epoch"], state["elapsed"]
        print(f"resumed from {checkpoint} at epoch {start_epoch}")
    atomic_write_json(out / "config.json", asdict(cfg))
    logger = MetricsLogger(out)
    accuracy = None
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        began = time.time()
        order = torch.randperm(len(train_x), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"pretrain epoch {epoch + 1}/{cfg.epochs}", unit="step")
        for i in bar:
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total_steps, warmup_steps, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            inputs = normalize(augment(train_x[index], generator))
            with autocast(precision, torch.device("cpu")):
                loss = F.cross_entropy(model(inputs), train_y[index], label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
                logger.log(step, train_loss=loss.item(), lr=lr)
        elapsed += time.time() - began
        accuracy = evaluate_uint8(model, test_x, test_y, precision)
        logger.log((epoch + 1) * steps_per_epoch, epoch=epoch + 1, test_top1=accuracy, train_seconds=elapsed)
        print(f"epoch {epoch + 1}: test top-1 {accuracy:.4f} ({elapsed / 60:.1f} min so far)", flush=True)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "elapsed": elapsed,
        }
        atomic_write(checkpoint, lambda tmp, s=state: torch.save(s, tmp))
        export_weights(model, out, cfg, classes, accuracy, elapsed, epoch + 1, precision)
    logger.close()
    if accuracy is None:
        accuracy = evaluate_uint8(model, test_x, test_y, precision)
        export_weights(model, out, cfg, classes, accuracy, elapsed, cfg.epochs, precision)
    return json.loads((out / "model.json").read_text())


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
        "recipe": asdict(cfg),
        "precision": precision,
    }
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(weights, str(tmp)))
    atomic_write_json(out / "model.json", card)


def main() -> None:  # pragma: no cover - convenience for `python -m adaptformer.pretrain`
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(pretrain(PretrainConfig(data=args.data, out=args.out, epochs=args.epochs))))


if __name__ == "__main__":
    main()
