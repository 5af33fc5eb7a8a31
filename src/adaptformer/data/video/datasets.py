"""Video datasets in their official layouts, decoded with PyAV (``decode.py``) and sampled per ``sampling.py``.

=============  =======================================================================  =================
name           ``--data-root`` holds                                                    sampling, splits
=============  =======================================================================  =================
ssv2           ``labels.json``, ``train.json``, ``validation.json`` (or the official     segment; official
               ``something-something-v2-*.json`` names) and ``<id>.webm`` (in the root,  train / validation
               ``20bn-something-something-v2/`` or ``videos/``)
hmdb51         ``<class>/<name>.avi`` and the official ``<class>_test_split{1,2,3}.txt``  dense; ``--split``
               files anywhere under the root (tag 1 train, 2 test, 0 unused)
videolist      videos under the root; ``--train-list`` / ``--test-list`` files of          dense; the lists
               ``<path relative to the root> <label>`` lines; ``--label-map`` optional
videofolder    ``<class>/<video>`` or ``train/<class>/...`` + ``val/`` (or ``test/``)       dense; given folders,
                                                                                        else every 5th file
=============  =======================================================================  =================

A sample is ``(clip, label)``: the transform turns the decoded clip(s) into (C, T, H, W), or (V, C, T, H, W) for
several test views. A file that cannot be decoded raises :class:`UnreadableVideo`, which the loaders skip, count
and log; malformed annotation files fail at once, naming the file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from ...errors import AdaptFormerError
from ...utils.options import is_int
from ..registry import DatasetEntry, Split, register_dataset
from .decode import probe, read_clip
from .sampling import SAMPLING_MODES, TorchRandom, clip_indices

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")


@dataclass(frozen=True)
class ClipOptions:
    """How clips are cut from a video (dataset options of ``adaptformer train``)."""

    num_frames: int = 8
    sampling_rate: int = 4
    test_clips: int = 1
    mode: str = "dense"

    def __post_init__(self) -> None:
        for name in ("num_frames", "sampling_rate", "test_clips"):
            value = getattr(self, name)
            if not is_int(value, 1):
                raise AdaptFormerError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if self.mode not in SAMPLING_MODES:
            raise AdaptFormerError(f"sampling: expected one of {', '.join(SAMPLING_MODES)}, got {self.mode!r}")


class VideoClips(Dataset):
    """(path, label) pairs; each item decodes the frames of its clip(s) and applies ``transform``."""

    def __init__(self, samples: list[tuple[str, int]], options: ClipOptions, train: bool):
        self.samples, self.options, self.train = samples, options, train
        self.transform = None
        self.rng = TorchRandom()
        self._frames: dict[str, int] = {}  # frame counts, probed once per file (per worker)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        if path not in self._frames:
            self._frames[path] = probe(path).frames
        o = self.options
        clips = clip_indices(
            o.mode, self._frames[path], o.num_frames, o.sampling_rate, self.train, o.test_clips, self.rng
        )
        short_side = getattr(self.transform, "decode_short_side", None)
        union = sorted({i for clip in clips for i in clip})
        frames = dict(zip(union, read_clip(path, union, short_side), strict=True))
        decoded = [_stack([frames[i] for i in clip]) for clip in clips]
        return (self.transform(decoded) if self.transform else decoded), label


def _stack(frames):
    import numpy as np

    return np.stack(frames)


# ---- Something-Something v2 ----------------------------------------------------------------------------------
def _first(root: Path, names: tuple[str, ...], what: str) -> Path:
    for folder in (root, root / "labels", root / "annotations"):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise AdaptFormerError(f"--data-root {root}: no {what} ({' or '.join(names)})")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise AdaptFormerError(f"{path}: not valid JSON ({error})") from None


def _ssv2(root: Path, train: bool, verify: bool, download: bool, options: ClipOptions) -> Split:
    labels_file = _first(root, ("labels.json", "something-something-v2-labels.json"), "label map")
    split = "train" if train else "validation"
    entries_file = _first(root, (f"{split}.json", f"something-something-v2-{split}.json"), f"{split} list")
    label_map = _read_json(labels_file)
    if not isinstance(label_map, dict):
        raise AdaptFormerError(f"{labels_file}: expected an object template -> class id")
    classes = [name for name, _ in sorted(label_map.items(), key=lambda item: int(item[1]))]
    video_dir = next((d for d in (root / "20bn-something-something-v2", root / "videos") if d.is_dir()), root)
    samples = []
    for line, entry in enumerate(_read_json(entries_file), start=1):
        try:
            template = entry["template"].replace("[", "").replace("]", "")
            video = entry["id"]
        except (KeyError, TypeError, AttributeError):
            raise AdaptFormerError(f"{entries_file}: entry {line} has no 'id' and 'template'") from None
        if template not in label_map:
            raise AdaptFormerError(f"{entries_file}: entry {line}: template {template!r} is not in {labels_file.name}")
        samples.append((str(video_dir / f"{video}.webm"), int(label_map[template])))
    return Split(VideoClips(samples, _with_mode(options, "segment"), train), classes)


# ---- HMDB51 ---------------------------------------------------------------------------------------------------
def _hmdb51(root: Path, train: bool, verify: bool, download: bool, options: ClipOptions, split: int = 1) -> Split:
    if split not in (1, 2, 3):
        raise AdaptFormerError(f"--split: HMDB51 has splits 1, 2 and 3, got {split!r}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.avi")))
    split_files = {f.name.rsplit("_test_split", 1)[0]: f for f in sorted(root.rglob(f"*_test_split{split}.txt"))}
    if not classes:
        raise AdaptFormerError(f"--data-root {root}: no class folders of .avi files")
    missing = [c for c in classes if c not in split_files]
    if missing:
        raise AdaptFormerError(
            f"--data-root {root}: no {missing[0]}_test_split{split}.txt (the official split files, e.g. "
            "testTrainMulti_7030_splits/, must be under the data root)"
        )
    wanted_tag = "1" if train else "2"
    samples = []
    for label, name in enumerate(classes):
        for number, text in enumerate(split_files[name].read_text().splitlines(), start=1):
            if not text.strip():
                continue
            parts = text.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise AdaptFormerError(f"{split_files[name]}:{number}: expected '<video>.avi <0|1|2>', got {text!r}")
            if parts[1] == wanted_tag:
                samples.append((str(root / name / parts[0]), label))
    return Split(VideoClips(samples, options, train), classes)


# ---- lists of "path label" -----------------------------------------------------------------------------------
def read_label_map(path: Path) -> list[str]:
    """One class name per line (line k is class k), as mmaction2 ships them."""
    if not path.is_file():
        raise AdaptFormerError(f"--label-map {path}: no such file")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise AdaptFormerError(f"--label-map {path}: class names repeat")
    return names


def read_video_list(path: Path, root: Path, classes: list[str] | None, option: str) -> list[tuple[str, int]]:
    """Lines ``<path> <label>``; the label is an index, or a class name when a label map is given. Paths may
    contain spaces (the label is the last field)."""
    if not path.is_file():
        raise AdaptFormerError(f"{option} {path}: no such file")
    samples = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        parts = text.strip().rsplit(maxsplit=1)
        if len(parts) != 2:
            raise AdaptFormerError(f"{path}:{number}: expected '<video path> <label>', got {text!r}")
        video, label = parts
        if re.fullmatch(r"\d+", label):
            index = int(label)
            if classes is not None and index >= len(classes):
                raise AdaptFormerError(
                    f"{path}:{number}: label {index} is not in the label map ({len(classes)} classes)"
                )
        elif classes is not None and label in classes:
            index = classes.index(label)
        else:
            raise AdaptFormerError(f"{path}:{number}: label {label!r} is not a class index or a name in the label map")
        samples.append((str(root / video), index))
    if not samples:
        raise AdaptFormerError(f"{option} {path}: no lines")
    return samples


def _videolist(
    root: Path,
    train: bool,
    verify: bool,
    download: bool,
    options: ClipOptions,
    train_list: str | None = None,
    test_list: str | None = None,
    label_map: str | None = None,
) -> Split:
    option, listed = ("--train-list", train_list) if train else ("--test-list", test_list)
    if not listed:
        raise AdaptFormerError(f"{option} is required for dataset videolist")
    names = read_label_map(Path(label_map)) if label_map else None
    samples = read_video_list(Path(listed), root, names, option)
    if names is None:  # classes from the labels of both lists, so train and test agree
        other = test_list if train else train_list
        labels = [label for _, label in samples]
        if other and Path(other).is_file():
            labels += [label for _, label in read_video_list(Path(other), root, None, option)]
        names = [str(i) for i in range(max(labels) + 1)]
    return Split(VideoClips(samples, options, train), names)


# ---- folders of videos -----------------------------------------------------------------------------------------
def _list_videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def _videofolder(root: Path, train: bool, verify: bool, download: bool, options: ClipOptions) -> Split:
    from ..image import class_folders

    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = class_folders(root / "train")
        folder = root / "train" if train else test_dir
        samples = [(str(p), i) for i, c in enumerate(classes) for p in _list_videos(folder / c)]
    else:
        classes = class_folders(root)
        samples = []
        for i, c in enumerate(classes):
            samples += [(str(p), i) for k, p in enumerate(_list_videos(root / c)) if (k % 5 == 4) != train]
    if not samples:
        raise AdaptFormerError(f"--data-root {root}: no videos with suffixes {', '.join(VIDEO_SUFFIXES)}")
    return Split(VideoClips(samples, options, train), classes)


def _with_mode(options: ClipOptions, mode: str) -> ClipOptions:
    return ClipOptions(options.num_frames, options.sampling_rate, options.test_clips, mode)


def _builder(build, *extra: str):
    """Adapt a builder to the registry's signature: clip options and the named extra options from keywords."""

    def run(root, train, verify, download, num_frames=8, sampling_rate=4, test_clips=1, **rest):
        options = ClipOptions(num_frames, sampling_rate, test_clips)
        return build(root, train, verify, download, options, **{k: rest[k] for k in extra if k in rest})

    return run


for _name, _build, _extra, _description in (
    ("ssv2", _ssv2, (), "Something-Something v2: webm videos + official json lists"),
    ("hmdb51", _hmdb51, ("split",), "HMDB51: class folders of .avi + official split files"),
    ("videolist", _videolist, ("train_list", "test_list", "label_map"), "lists of '<path> <label>' lines"),
    ("videofolder", _videofolder, (), "<class>/<video> or train/ + val|test/"),
):
    register_dataset(DatasetEntry(_name, _builder(_build, *_extra), True, "video", _description, hflip=_name != "ssv2"))
