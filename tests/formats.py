"""Writers of small datasets in the real on-disk formats of CIFAR, SVHN, Food-101 and image folders."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        labels = [(i + j) % 10 for j in range(per_batch)]
        blob = {
            "data": _rows(per_batch, i),
            "labels": labels,
            "batch_label": name,
            "filenames": [f"{name}_{j}.png" for j in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(blob, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_cifar100(root: Path, train: int = 20, test: int = 10) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", train), ("test", test)):
        fine = [j % 100 for j in range(n)]
        blob = {
            "data": _rows(n, n),
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
            "batch_label": name,
            "filenames": [f"{j}.png" for j in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(blob, protocol=2))
    meta = {
        "fine_label_names": [f"class_{k:03d}" for k in range(100)],
        "coarse_label_names": [f"super_{k:02d}" for k in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_svhn(root: Path, train: int = 12, test: int = 6) -> Path:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", train), ("test", test)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array([[1 + (j % 10)] for j in range(n)], dtype=np.uint8)  # 1..10, 10 means digit 0
        savemat(root / f"{name}_32x32.mat", {"X": x, "y": y})
    return root


def write_food101(root: Path, classes=("apple_pie", "baby_back_ribs", "churros"), per_class: int = 4) -> Path:
    base = root / "food-101"
    rng = np.random.default_rng(0)
    splits = {"train": {}, "test": {}}
    for c in classes:
        (base / "images" / c).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(base / "images" / c / f"{j}.jpg")
            splits["train" if j < per_class - 1 else "test"].setdefault(c, []).append(f"{c}/{j}")
    (base / "meta").mkdir()
    for split, entries in splits.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(entries))
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def write_imagefolder(
    root: Path, classes=("cats", "dogs"), per_class: int = 10, size: int = 32, split_folders: bool = False
) -> Path:
    """Class-coloured noisy images (learnable: the class decides the mean colour)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val") if split_folders else ("",):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                colour = np.zeros(3)
                colour[index % 3] = 200
                pixels = np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{j:03d}.png")
    return root


def write_vtab(root: Path, tasks=("eurosat", "dtd"), classes: int = 3, train: int = 8, val: int = 4, test: int = 6):
    """VTAB-1k's layout: ``<root>/<task>/images/*.jpg`` and the four list files (``path label`` per line), with
    train800val200 = train800 + val200 as released. Images are 40 x 24 (not square: the squash resize shows)."""
    rng = np.random.default_rng(0)
    for task in tasks:
        folder = root / task
        (folder / "images").mkdir(parents=True, exist_ok=True)
        lists = {}
        for split, count in (("train800", train), ("val200", val), ("test", test)):
            lines = []
            for j in range(count):
                label = j % classes
                colour = np.zeros(3)
                colour[label % 3] = 200
                pixels = np.clip(colour + rng.normal(0, 30, (24, 40, 3)), 0, 255).astype(np.uint8)
                name = f"images/{split}_{j:04d}.jpg"
                Image.fromarray(pixels).save(folder / name, quality=95)
                lines.append(f"{name} {label}")
            lists[split] = lines
        lists["train800val200"] = lists["train800"] + lists["val200"]
        for split, lines in lists.items():
            (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


FGVC_LAYOUT = {  # dataset -> (folder, image folder): VPT's loader
    "cub": ("CUB_200_2011", "images"),
    "nabirds": ("nabirds", "images"),
    "flowers": ("OxfordFlower", ""),
    "dogs": ("Stanford-dogs", "Images"),
    "cars": ("Stanford-cars", ""),
}


def write_fgvc(root: Path, name: str = "nabirds", ids=(295, 296, 400), per_split=(6, 3, 3)) -> Path:
    """An FGVC dataset as VPT released its splits: images in per-class folders under the dataset's image folder
    and ``train/val/test.json`` mapping their paths to (possibly sparse) class ids."""
    folder, image_dir = FGVC_LAYOUT[name]
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val", "test"), per_split, strict=True):
        mapping = {}
        for j in range(count):
            label = ids[j % len(ids)]
            relative = f"{label:04d}.class/{split}_{j:03d}.jpg"
            path = root / folder / image_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(rng.normal(100 + ids.index(label) * 50, 20, (36, 30, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=95)
            mapping[relative] = label
        (root / folder / f"{split}.json").write_text(json.dumps(mapping))
    return root


# ---- videos -------------------------------------------------------------------------------------------------
VIDEO_CODECS = {".mp4": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4", ".mkv": "libx264"}


def video_frames(count: int, height: int = 48, width: int = 64, seed: int = 0, motion: int = 0) -> np.ndarray:
    """Frames whose red level encodes the frame index (k * 8), with noise (so files are > 1 KiB) and an optional
    bright square moving ``motion`` pixels per frame."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 40, size=(count, height, width, 3), dtype=np.uint8)
    for k in range(count):
        frames[k, :, :, 0] = min(255, 8 * k)
        if motion:
            x = (k * motion) % (width - 8)
            frames[k, 20:28, x : x + 8, 1] = 255
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = 12) -> Path:
    """Encode RGB frames with PyAV in the container the suffix names (H.264 mp4, VP9 webm, MPEG-4 avi)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(VIDEO_CODECS[path.suffix], rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if path.suffix in (".mp4", ".mkv"):
            stream.options = {"crf": "10", "preset": "ultrafast"}
        elif path.suffix == ".avi":
            stream.options = {"qscale": "2"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_ssv2(
    root: Path,
    templates=("Pushing [something] from left to right", "Pushing [something] from right to left"),
    per_class=3,
) -> Path:
    """Official layout: labels.json (template without brackets -> id string), train/validation lists, <id>.webm."""
    labels = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)}
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "labels.json").write_text(json.dumps(labels))
    entries = {"train": [], "validation": []}
    video_id = 1
    for label, template in enumerate(templates):
        for j in range(per_class):
            split = "validation" if j == per_class - 1 else "train"
            entries[split].append({"id": str(video_id), "label": "x", "template": template, "placeholders": ["x"]})
            write_video(
                root / "20bn-something-something-v2" / f"{video_id}.webm",
                video_frames(16, seed=video_id, motion=3 if label == 0 else -3),
            )
            video_id += 1
    for split, items in entries.items():
        (root / "labels" / f"{split}.json").write_text(json.dumps(items))
    return root


def write_hmdb51(root: Path, classes=("brush_hair", "cartwheel"), per_class=3) -> Path:
    """<class>/<name>.avi + testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt ('name.avi tag ' lines)."""
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for c, name in enumerate(classes):
        lines = []
        for j in range(per_class):
            video = f"{name}_clip_{j}.avi"
            write_video(root / name / video, video_frames(20, seed=10 * c + j))
            lines.append(f"{video} {2 if j == per_class - 1 else 1} ")
        for split in (1, 2, 3):
            (splits / f"{name}_test_split{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def _colour_mix(rng, labels: tuple[int, ...], size: int) -> np.ndarray:
    """An image whose red / green / blue channels are bright exactly for its labels 0 / 1 / 2 (learnable)."""
    colour = np.zeros(3)
    colour[list(labels)] = 200
    return np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)


MULTILABEL_SETS = ((0,), (1,), (2,), (0, 1), (1, 2), (0, 2), (0, 1, 2), ())


def write_multilabel(root: Path, classes=("red", "green", "blue"), train: int = 24, test: int = 16, size: int = 32):
    """The generic multi-label layout: ``photos/*.png`` and ``train.csv`` / ``test.csv`` (``path,labels`` with
    ``|`` between labels; one image per split has none)."""
    rng = np.random.default_rng(0)
    (root / "photos").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        lines = ["path,labels"]
        for j in range(count):
            labels = MULTILABEL_SETS[j % len(MULTILABEL_SETS)]
            name = f"photos/{split}_{j:03d}.png"
            Image.fromarray(_colour_mix(rng, labels, size)).save(root / name)
            lines.append(f"{name},{'|'.join(classes[i] for i in labels)}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def write_nuswide(root: Path, train: int = 12, test: int = 8, missing: int = 2, size: int = 32) -> Path:
    """NUS-WIDE's release: ``Concepts81.txt``, ``ImageList/{Train,Test}Imagelist.txt`` (Windows separators),
    ``TrainTestLabels/Labels_<concept>_{Train,Test}.txt`` and ``Flickr/<folder>/<image>.jpg``; the first three
    concepts follow the colour channels, the rest are rare. The last ``missing`` images of each list are absent,
    as on public mirrors."""
    rng = np.random.default_rng(0)
    concepts = ["red", "green", "blue"] + [f"concept{i:02d}" for i in range(78)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "Concepts81.txt").write_text("\n".join(concepts) + "\n")
    for folder in ("ImageList", "TrainTestLabels"):
        (root / folder).mkdir(exist_ok=True)
    for which, count in (("Train", train), ("Test", test)):
        names, columns = [], [[] for _ in concepts]
        for j in range(count):
            labels = MULTILABEL_SETS[j % len(MULTILABEL_SETS)] + ((3,) if j % 4 == 0 else ())
            name = f"animal\\{which.lower()}_{j:04d}.jpg"
            names.append(name)
            for c in range(len(concepts)):
                columns[c].append("1" if c in labels else "0")
            if j < count - missing:
                path = root / "Flickr" / name.replace("\\", "/")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_colour_mix(rng, tuple(c for c in labels if c < 3), size)).save(path, quality=95)
        (root / "ImageList" / f"{which}Imagelist.txt").write_text("\r\n".join(names) + "\r\n")
        for concept, column in zip(concepts, columns, strict=True):
            (root / "TrainTestLabels" / f"Labels_{concept}_{which}.txt").write_text("\n".join(column) + "\n")
    return root
