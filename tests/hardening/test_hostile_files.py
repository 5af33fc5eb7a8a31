"""Hostile task files and checkpoints: every one refused in one line naming the file; nothing is unpickled
unsafely anywhere in the package."""

import json
import pickle
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.cli import main
from adaptformer.tasks import read_task
from conftest import tiny_vit

PACKAGE = Path(adaptformer.__file__).parent


class Payload:
    """A pickle that runs code when loaded unsafely: it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture()
def task_file(tmp_path):
    model = adaptformer.adapt(tiny_vit(), "adaptformer", bottleneck=4)
    return adaptformer.save_task(model, tmp_path / "good.safetensors")


def rewrite(path: Path, out: Path, edit) -> Path:
    meta, tensors = read_task(path)
    meta, tensors = edit(meta, dict(tensors))
    save_file(tensors, str(out), metadata={"adaptformer": json.dumps(meta)})
    return out


def _set(tensors, key, value):
    tensors[key] = value
    return tensors


HOSTILE_TENSORS = {
    "wrong shape": (lambda t: _set(t, "blocks.0.adaptmlp.down_proj.weight", torch.zeros(5, 32)), "shape mismatch"),
    "wrong dtype": (
        lambda t: _set(t, "blocks.0.adaptmlp.down_proj.weight", torch.zeros(4, 32, dtype=torch.int32)),
        "dtype torch.int32",
    ),
    "NaN": (
        lambda t: _set(t, "blocks.1.adaptmlp.up_proj.weight", torch.full((32, 4), float("nan"))),
        r"non-finite values \(NaN or inf\) in \['blocks.1.adaptmlp.up_proj.weight'\]",
    ),
    "inf": (lambda t: _set(t, "head.1.bias", torch.full_like(t["head.1.bias"], float("inf"))), "non-finite"),
    "extra key": (
        lambda t: _set(t, "blocks.0.attn.qkv.weight", torch.zeros(96, 32)),
        r"unexpected \['blocks.0.attn.qkv.weight'\]",
    ),
    "missing key": (lambda t: {k: v for k, v in t.items() if k != "head.1.weight"}, r"missing \['head.1.weight'\]"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_TENSORS))
def test_hostile_tensors_are_refused_in_one_line(tmp_path, task_file, kind):
    edit, message = HOSTILE_TENSORS[kind]
    path = rewrite(task_file, tmp_path / "bad.safetensors", lambda m, t: (m, edit(t)))
    with pytest.raises(AdaptFormerError, match=message) as error:
        adaptformer.apply_task(tiny_vit(), path)
    assert "bad.safetensors" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: {**m, "classes": 7}, "classes: expected a non-empty list"),
        (lambda m: {**m, "classes": ["a", "b"]}, "num_classes 5 but 2 class names"),
        (lambda m: {**m, "backbone": None}, "backbone: expected a mapping"),
        (
            lambda m: {**m, "method": {"method": "adaptformer", "bottleneck": "wide"}},
            "method: bottleneck: expected an integer",
        ),
        (lambda m: {**m, "method": {"method": "rm -rf"}}, "method: method: expected one of adaptformer"),
        (lambda m: {**m, "format_version": 99}, "expected adaptformer"),
        (lambda m: [1, 2], "format"),
    ],
)
def test_hostile_metadata_is_refused_in_one_line(tmp_path, task_file, edit, message):
    path = rewrite(task_file, tmp_path / "bad.safetensors", lambda m, t: (edit(m), t))
    with pytest.raises(AdaptFormerError, match=message) as error:
        adaptformer.apply_task(tiny_vit(), path)
    assert "bad.safetensors" in str(error.value)


def test_truncated_oversized_header_and_pickled_task_files(tmp_path, task_file, capsys):
    data = task_file.read_bytes()
    marker = tmp_path / "pwned"
    cases = {
        "cut.safetensors": data[: len(data) - 100],
        "empty.safetensors": b"",
        "header.safetensors": struct.pack("<Q", 2**62) + data[8:],  # claims an exabyte of header
        "pickle.safetensors": pickle.dumps(Payload(marker)),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AdaptFormerError, match=re.escape(name)):
            adaptformer.apply_task(tiny_vit(), tmp_path / name)
        assert main(["eval", "--task", str(tmp_path / name), "--dataset", "digits"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and name in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not marker.exists()


def test_pickled_checkpoints_carrying_code_are_not_executed(tmp_path):
    from adaptformer.backbones.checkpoints import read_state_dict
    from adaptformer.runtime.state import load_training_state

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": Payload(marker)}, evil)
    with pytest.raises(AdaptFormerError, match="evil.pth"):
        read_state_dict(evil)
    with pytest.raises(AdaptFormerError, match="evil.pth"):
        load_training_state(evil)
    (tmp_path / "cut.pth").write_bytes(evil.read_bytes()[:20])
    with pytest.raises(AdaptFormerError, match="cut.pth"):
        load_training_state(tmp_path / "cut.pth")
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 1, match.end()
            while depth:  # the call's whole argument list, across lines
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            calls.append((path.name, text[match.start() : end]))
    assert calls, "expected the package to load checkpoints somewhere"
    unsafe = [(name, call) for name, call in calls if "weights_only=True" not in call]
    assert not unsafe, unsafe
    assert not [p for p in PACKAGE.rglob("*.py") if re.search(r"pickle\.loads?\(|allow_pickle=True", p.read_text())]
