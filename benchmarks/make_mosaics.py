"""A multi-label image task built offline from any single-label image folder: 2x2 mosaics of one to four tiles,
each tile an image of the folder, labelled with the classes of its tiles (the generic ``multilabel`` layout).

    python benchmarks/make_mosaics.py --source cifar10/test --out data/mosaics --train 2000 --test 500
    adaptformer train --dataset multilabel --data-root data/mosaics ...

``--source`` is an ImageFolder root (``<class>/<image>``). The two splits draw their tiles from disjoint halves of
every class's images, so no test tile was seen in training. Empty tiles are mid-grey.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def class_images(source: Path) -> dict[str, list[Path]]:
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    found = {c: sorted(p for p in (source / c).iterdir() if p.suffix.lower() in SUFFIXES) for c in classes}
    if not found or not all(found.values()):
        raise SystemExit(f"--source {source}: expected <class>/<image> folders with images")
    return found


def write_split(out: Path, split: str, count: int, pool: dict[str, list[Path]], tile: int, rng: random.Random):
    lines = ["path,labels"]
    (out / split).mkdir(parents=True, exist_ok=True)
    classes = list(pool)
    for index in range(count):
        mosaic = Image.new("RGB", (2 * tile, 2 * tile), (128, 128, 128))
        slots = rng.sample(range(4), rng.randint(1, 4))
        labels = set()
        for slot in slots:
            label = rng.choice(classes)
            with Image.open(rng.choice(pool[label])) as image:
                piece = image.convert("RGB").resize((tile, tile), Image.BICUBIC)
            mosaic.paste(piece, ((slot % 2) * tile, (slot // 2) * tile))
            labels.add(label)
        name = f"{split}/{index:05d}.png"
        mosaic.save(out / name)
        lines.append(f"{name},{'|'.join(sorted(labels))}")
    (out / f"{split}.csv").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="an ImageFolder root: <class>/<image>")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--tile", type=int, default=32, help="side of a tile in pixels (the mosaic is twice that)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = class_images(args.source)
    halves = {c: (files[: len(files) // 2], files[len(files) // 2 :]) for c, files in images.items()}
    rng = random.Random(args.seed)
    write_split(args.out, "train", args.train, {c: h[0] for c, h in halves.items()}, args.tile, rng)
    write_split(args.out, "test", args.test, {c: h[1] for c, h in halves.items()}, args.tile, rng)
    (args.out / "classes.txt").write_text("\n".join(images) + "\n")
    print(f"{args.out}: {args.train} train and {args.test} test mosaics, {len(images)} classes")


if __name__ == "__main__":
    main()
