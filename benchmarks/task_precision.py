"""What the way a task store holds its resident tasks costs in answers: ``--task-precision fp32``, ``auto`` (bf16 or
fp16 when serving so) and ``int8``, on real task files and real images, in one run.

    python benchmarks/task_precision.py --task-dir runs/tasks --images data/val      # class folders: accuracy too
    python benchmarks/task_precision.py --task runs/cifar/best.safetensors --images photos/ --precision bf16

Every image goes through every task once per task precision (the same serving precision, the same batches), and
each precision's answers are compared with fp32 residency's: top-1 agreement, the largest and the mean change of
the top-1 probability, and top-1 accuracy where ``--images`` is laid out as class folders named as the task's
classes. Also printed: the MB a resident task takes in each. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import cpu_flags  # noqa: E402

from adaptformer.bank import TaskBank  # noqa: E402
from adaptformer.objectives import get_objective  # noqa: E402

PRECISIONS = ("fp32", "auto", "int8")
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def images_of(folder: Path, limit: int | None) -> tuple[list[Path], list[str | None]]:
    """Image files under ``folder`` (sorted), each with its class folder's name where the layout has them."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)[:limit]
    labels = [p.parent.name if p.parent != folder else None for p in files]
    return files, labels


def probabilities(bank: TaskBank, task: str, files: list[Path], batch: int) -> torch.Tensor:
    """(images, classes) probabilities of ``task`` (softmax, or sigmoid for a multi-label task)."""
    objective = get_objective(bank.info(task).objective)
    rows = []
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        inputs = [bank.input_rows(Image.open(path).convert("RGB"), [task])[0] for path in chunk]
        for logits in bank.logits(torch.stack(inputs), [task] * len(chunk)):
            rows.append(objective.probabilities(logits))
    return torch.stack(rows)


def compare(args) -> None:
    files, labels = images_of(Path(args.images), args.limit)
    if not files:
        raise SystemExit(f"--images {args.images}: no image files")
    banks = {
        precision: TaskBank.open(
            args.task, args.task_dir, precision=args.precision, device="cpu", task_precision=precision
        )
        for precision in PRECISIONS
    }
    reference = banks["fp32"]
    print(
        f"CPU flags: {cpu_flags()}; serving precision {reference.precision}; {len(files)} images; "
        f"{len(reference.tasks)} tasks",
        flush=True,
    )
    for task in reference.tasks:
        info = reference.info(task)
        answers = {precision: probabilities(bank, task, files, args.batch) for precision, bank in banks.items()}
        base = answers["fp32"]
        line = [f"{task} ({info.method}, {len(info.classes)} classes):"]
        for precision, probs in answers.items():
            mb = banks[precision].stats()["resident_mb"]
            text = f"{precision}: {mb:.3f} MB"
            if precision != "fp32":
                agree = float((probs.argmax(-1) == base.argmax(-1)).float().mean())
                change = (probs - base).abs().max(-1).values
                text += (
                    f", top-1 agrees {agree:.4f}, |dp| max {float(change.max()):.4f} mean {float(change.mean()):.5f}"
                )
            if all(label in info.classes for label in labels):
                truth = torch.tensor([info.classes.index(label) for label in labels])
                text += f", accuracy {float((probs.argmax(-1) == truth).float().mean()):.4f}"
            line.append(text)
        print("\n  ".join(line), flush=True)
        for bank in banks.values():
            bank.residency.evict(task)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", default=[], help="a task file (repeatable)")
    parser.add_argument("--task-dir", default=None, help="a directory of task files")
    parser.add_argument("--images", required=True, help="a folder of images (class folders: accuracy too)")
    parser.add_argument("--precision", default="auto", help="the serving precision (auto: bf16 where fast)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    args = parser.parse_args()
    if not args.task and not args.task_dir:
        parser.error("give --task FILE or --task-dir DIR")
    compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
