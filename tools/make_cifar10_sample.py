"""Build ``src/adaptformer/data/samples/cifar10_sample.npz``: 200 CIFAR-10 *test* images per class.

The embedded backbone was pretrained on CIFAR-10's training split only, so these images are new to it. The
file keeps each image's JPEG bytes (about 0.9 KB each, 1.8 MB in all) in one uint8 array with offsets, so it
loads without pickle. The first 100 images of each class (by file name) are the training split, the next 100
the test split. Usage::

    python tools/make_cifar10_sample.py CIFAR10_DIR   # CIFAR10_DIR/test/<class>/NNNN.jpg (ImageFolder layout)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS = 200
OUT = Path(__file__).resolve().parents[1] / "src/adaptformer/data/samples/cifar10_sample.npz"


def main(root: str) -> None:
    blobs, labels, train = [], [], []
    for label, name in enumerate(CLASSES):
        files = sorted((Path(root) / "test" / name).glob("*.jpg"))[:PER_CLASS]
        if len(files) < PER_CLASS:
            raise SystemExit(f"{root}/test/{name}: expected at least {PER_CLASS} .jpg files, found {len(files)}")
        for position, path in enumerate(files):
            blobs.append(np.frombuffer(path.read_bytes(), dtype=np.uint8))
            labels.append(label)
            train.append(position < PER_CLASS // 2)
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUT, jpeg=np.concatenate(blobs), offsets=offsets, labels=np.array(labels, np.int64), train=np.array(train))
    print(f"{OUT}: {len(blobs)} images, {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/make_cifar10_sample.py CIFAR10_DIR")
    main(sys.argv[1])
