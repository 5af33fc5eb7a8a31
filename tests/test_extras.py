"""Packaging: the core works without any extra installed, and a feature whose extra is missing says in one line
what to install (``pip install "adaptformer[...]"``), with exit status 2 from the command line."""

import subprocess
import sys
import textwrap

import pytest

from adaptformer.utils.extras import EXTRAS, MissingExtra, require

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):  # as if the extras were never installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    for name in BLOCKED:  # importing one fails, and importlib.util.find_spec (torch probes onnx so) says None
        sys.modules[name] = None
    sys.argv = ["adaptformer", *sys.argv[2:]]
    from adaptformer.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)
ALL_EXTRAS = ",".join(sorted(EXTRAS))


def without_extras(*arguments: str, blocked: str = ALL_EXTRAS) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, blocked, *arguments], capture_output=True, text=True, timeout=300
    )


def test_the_core_trains_and_predicts_without_any_extra(tmp_path):
    from training_helpers import tiny_train_values

    values = tiny_train_values(tmp_path, epochs=1)
    arguments = ["train", "--dataset", "imagefolder", "--data-root", values["data_root"], "--model", values["model"]]
    arguments += [
        "--checkpoint",
        values["checkpoint"],
        "--model-kwargs",
        '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}',
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--effective-batch",
        "8",
        "--workers",
        "0",
        "--precision",
        "fp32",
        "--out",
        str(tmp_path / "run"),
    ]
    trained = without_extras(*arguments)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert 'TensorBoard scalars skipped: tensorboard is not installed: pip install "adaptformer[report]"' in (
        trained.stderr
    )
    image = next((tmp_path / "data" / "red").iterdir())
    task = str(tmp_path / "run" / "last.safetensors")
    predicted = without_extras("predict", "--task", task, "--checkpoint", values["checkpoint"], str(image))
    assert predicted.returncode == 0 and str(image) in predicted.stdout, predicted.stderr[-2000:]


@pytest.mark.parametrize(
    "arguments, extra",
    [
        (["serve", "--task-dir", "."], "serve"),
        (["params", "--model", "hf:some/vit"], "hf"),
        (["train", "--dataset", "lfw-faces", "--model", "adaptformer/vit-tiny-cifar10", "--out", "run"], "demo"),
        (["report", "finished", "--out", "report"], "report"),
    ],
)
def test_a_missing_extra_is_one_line_naming_the_pip_command(tmp_path, monkeypatch, arguments, extra):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "finished").mkdir()  # a finished run, as report reads it
    (tmp_path / "finished" / "config.yaml").write_text("dataset: digits\nmethod: linear\n")
    (tmp_path / "finished" / "summary.json").write_text('{"top1": 50.0, "trainable": 10}')
    result = without_extras(*arguments)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f'pip install "adaptformer[{extra}]"' in lines[0]


def test_require_names_the_feature_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # what an interpreter without PyAV does on import
    with pytest.raises(
        MissingExtra, match=r'decoding video needs av \(PyAV\) is not installed: pip install "adaptformer\[video\]"'
    ):
        require("av", "decoding video")
    assert require("json", "anything").dumps([]) == "[]"
