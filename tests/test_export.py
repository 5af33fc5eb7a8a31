"""``adaptformer export``: every method and every family the project adapts becomes one program with a dynamic
batch (torch.export; ONNX through onnxruntime for a spread of them) whose outputs equal the eager model's, with
its preprocessing and labels beside it; ``predict --onnx`` answers as ``predict --task``; ``--merge`` folds a
linear method first; folders that are wrong inside are one line."""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.cli import main
from adaptformer.export import ExportedTask, export_model
from adaptformer.methods.registry import method_names
from adaptformer.train.loop import fit
from conftest import perturb_task
from formats import write_imagefolder
from training_helpers import tiny_checkpoint, tiny_train_config

sys.path.insert(0, str(Path(__file__).parent / "backbones"))
import test_discovered as discovered  # noqa: E402
import test_families as families  # noqa: E402
from test_video import NAME as VIDEO_NAME  # noqa: E402
from test_video import TINY as VIDEO_TINY  # noqa: E402

BUILDERS = {**{n: (families.make, families.inputs) for n in families.FAMILIES},
            **{n: (discovered.make, discovered.inputs) for n in discovered.FAMILIES}}  # fmt: skip
#: one of each kind of block and layout (every family, both formats: python benchmarks/export_families.py)
TRACED = ["deit_tiny_distilled_patch16_224", "eva02_tiny_patch14_224", "swin_tiny_patch4_window7_224",
          "samvit_base_patch16", "hiera_tiny_224", "convnext", "gmixer", "plain-module", "hf-beit"]  # fmt: skip


def perturbed(model):
    """The task's tensors moved off their (often zero) initialisation, so the check sees the task at work."""
    return perturb_task(model, 0.05, seed=3)


def eager_outputs(model, x):
    with torch.no_grad():
        logits = model.eval()(x)
    return logits, torch.softmax(logits, -1)


def assert_program_equals_eager(directory, model, x):
    exported = ExportedTask.open(directory)
    got = exported.logits(x)
    logits, _ = eager_outputs(model, x)
    assert got.shape == logits.shape and torch.allclose(got, logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", method_names())
def test_every_method_exports_with_a_dynamic_batch_and_equals_eager(method, tmp_path):
    model = perturbed(adaptformer.adapt(families.make("deit_tiny_distilled_patch16_224"), method, num_classes=3))
    exported = export_model(model, tmp_path / "out", "torch-export")
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert manifest == exported.manifest and manifest["method"] == method and manifest["format"] == "torch-export"
    assert manifest["input"] == {"name": "pixel_values", "datatype": "FP32", "shape": ["batch", 3, 32, 32]}
    assert [o["name"] for o in manifest["outputs"]] == ["logits", "probabilities"]
    assert max(manifest["check"]["max_abs_difference"].values()) <= 1e-4 and manifest["check"]["batch"] == 3
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == model.task.classes
    for batch in (1, 5):  # neither the traced batch (2) nor the checked one (3)
        assert_program_equals_eager(tmp_path / "out", model, families.inputs("deit_tiny_distilled_patch16_224", batch))


def test_exporting_leaves_the_callers_model_as_it_was(tmp_path):
    model = perturbed(adaptformer.adapt(families.make("deit_tiny_distilled_patch16_224"), "adaptformer", num_classes=3))
    x = families.inputs("deit_tiny_distilled_patch16_224", 3)
    float_model = copy.deepcopy(model)
    model.to(torch.bfloat16).train()  # a model mid-training, in another precision
    export_model(model, tmp_path / "out", "torch-export")
    assert model.training and all(p.dtype == torch.bfloat16 for p in model.parameters())
    # the program is the fp32 model: the bf16 weights widened, checked against eager fp32 on them
    assert_program_equals_eager(tmp_path / "out", float_model.to(torch.bfloat16).float(), x)


@pytest.mark.parametrize("name", TRACED)
def test_families_trace_into_programs_equal_to_eager(name, tmp_path):
    make, inputs = BUILDERS[name]
    model = perturbed(adaptformer.adapt(make(name), "adaptformer", num_classes=3))
    x = inputs(name, 4)
    spec = model.input_spec().replace(size=x.shape[-1])  # as a task file records it (NaFlexViT takes any size)
    export_model(model, tmp_path / "out", "torch-export", spec)
    assert_program_equals_eager(tmp_path / "out", model, x)


@pytest.mark.parametrize(
    "name, method",
    [
        ("deit_tiny_distilled_patch16_224", "vpt"),  # AdaptFormer to ONNX: the CLI test below
        ("deit_tiny_distilled_patch16_224", "convpass"),
        ("swin_tiny_patch4_window7_224", "lora"),
        ("samvit_base_patch16", "adaptformer"),  # windowed attention: the fused op takes 4-D inputs only in ONNX
        ("hf-beit", "ssf"),
    ],
)
def test_onnx_programs_run_in_onnxruntime_as_the_eager_model(name, method, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    make, inputs = BUILDERS[name]
    model = perturbed(adaptformer.adapt(make(name), method, num_classes=3))
    x = inputs(name, 4)
    export_model(model, tmp_path / "out", "onnx", model.input_spec().replace(size=x.shape[-1]))
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    logits, probabilities = session.run(None, {"pixel_values": x.numpy()})
    expected_logits, expected_probabilities = eager_outputs(model, x)
    assert np.abs(logits - expected_logits.numpy()).max() <= 1e-4
    assert np.abs(probabilities - expected_probabilities.numpy()).max() <= 1e-4
    if hasattr(model.backbone, "blocks"):  # fused attention is put back after tracing
        assert all(getattr(m, "fused_attn", True) for m in model.modules() if hasattr(m, "fused_attn"))


def test_a_video_task_exports_clips_with_frames_recorded(tmp_path):
    backbone = adaptformer.create_backbone(VIDEO_NAME, pretrained=False, **VIDEO_TINY)
    model = perturbed(adaptformer.adapt(backbone, "adaptformer", num_classes=4))
    export_model(model, tmp_path / "out", "torch-export")
    preprocessing = json.loads((tmp_path / "out" / "preprocessing.json").read_text())
    assert preprocessing["frames"] == 4 and preprocessing["modality"] == "video"
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert manifest["input"]["shape"] == ["batch", 3, 4, 32, 32]
    clips = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    assert_program_equals_eager(tmp_path / "out", model, clips)


def test_a_model_that_cannot_be_traced_is_refused_in_one_line(tmp_path):
    class DataDependent(torch.nn.Module):  # a head whose shape depends on the values: torch.export cannot trace it
        def forward(self, x):
            return x[x > 0].reshape(x.shape[0], -1)[:, :3]

    model = adaptformer.adapt(families.make("deit_tiny_distilled_patch16_224"), "linear", num_classes=3)
    model.task.head = DataDependent()
    with pytest.raises(AdaptFormerError) as refusal:
        export_model(model, tmp_path / "out", "torch-export")
    message = str(refusal.value)
    assert message.startswith("export: method linear on ") and "cannot be traced by torch.export" in message
    assert "\n" not in message and not (tmp_path / "out" / "export.json").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny task files (AdaptFormer and LoRA) trained on a generated image folder, and some images."""
    root = tmp_path_factory.mktemp("export")
    files = {}
    for method in ("adaptformer", "lora"):
        out = root / method
        fit(tiny_train_config(root, out=str(out), method=method, epochs=1, tensorboard=False))
        files[method] = out / "last.safetensors"
    images = write_imagefolder(root / "images", classes=("x",), per_class=4) / "x"
    return files, images, ["--checkpoint", str(tiny_checkpoint(root))]


def predictions(arguments, capsys):
    assert main(["predict", *arguments, "--json", "--top-k", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {Path(r["file"]).name: {a["label"]: a["prob"] for a in r["top_k"]} for r in rows}


def assert_same_answers(first, second):
    assert first.keys() == second.keys() and first
    for name in first:
        assert first[name].keys() == second[name].keys()
        assert all(abs(first[name][label] - second[name][label]) <= 1e-4 for label in first[name])


def test_export_and_predict_onnx_answer_as_the_task_file(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    files, images, weights = trained
    assert main(["export", str(files["adaptformer"]), "--out", str(tmp_path / "onnx"), *weights]) == 0
    out = capsys.readouterr().out
    assert "onnx program:" in out and "predict with: adaptformer predict --exported" in out
    assert "[torch.onnx]" not in out  # the exporter's progress is not the command's output
    reference = predictions(["--task", str(files["adaptformer"]), "--precision", "fp32", *weights, str(images)], capsys)
    assert_same_answers(predictions(["--onnx", str(tmp_path / "onnx"), str(images)], capsys), reference)
    pt2 = ["--out", str(tmp_path / "pt2"), "--format", "torch-export", *weights]
    assert main(["export", str(files["adaptformer"]), *pt2]) == 0
    capsys.readouterr()
    assert_same_answers(predictions(["--exported", str(tmp_path / "pt2"), str(images)], capsys), reference)
    assert main(["predict", "--onnx", str(tmp_path / "pt2"), str(images)]) == 2
    assert "holds a torch-export program (model.pt2), not onnx" in capsys.readouterr().err


def test_merge_folds_a_linear_method_first_and_refuses_the_others(trained, tmp_path, capsys):
    files, images, weights = trained
    merged = tmp_path / "merged"
    assert (
        main(["export", str(files["lora"]), "--out", str(merged), "--format", "torch-export", "--merge", *weights]) == 0
    )
    manifest = json.loads((merged / "export.json").read_text())
    assert manifest["merged"] is True and manifest["method"] == "linear"  # the plain backbone and a head
    capsys.readouterr()
    reference = predictions(["--task", str(files["lora"]), "--precision", "fp32", *weights, str(images)], capsys)
    assert_same_answers(predictions(["--exported", str(merged), str(images)], capsys), reference)
    assert main(["export", str(files["adaptformer"]), "--out", str(tmp_path / "no"), "--merge", *weights]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --merge: task file") and "adaptformer cannot be merged" in error
    assert "\n" not in error and not (tmp_path / "no").exists()


def test_folders_that_are_wrong_inside_are_one_line(trained, tmp_path, capsys):
    files, images, weights = trained
    folder = tmp_path / "pt2"
    assert main(["export", str(files["adaptformer"]), "--out", str(folder), "--format", "torch-export", *weights]) == 0
    capsys.readouterr()
    good = {name: (folder / name).read_bytes() for name in ("preprocessing.json", "labels.json", "model.pt2")}
    broken = {
        "preprocessing.json": json.dumps({"input_size": "big", "mean": [0, 0, 0], "std": [1, 1, 1], "crop_pct": 1}),
        "labels.json": json.dumps({"not": "a list"}),
        "model.pt2": "not a program",
    }
    expected = {
        "preprocessing.json": "not a preprocessing record",
        "labels.json": "expected a JSON list",
        "model.pt2": "not a readable torch.export program",
    }
    for name, text in broken.items():
        (folder / name).write_text(text)
        assert main(["predict", "--exported", str(folder), str(images)]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: {folder / name}") and expected[name] in error and "\n" not in error
        (folder / name).write_bytes(good[name])
    (folder / "labels.json").unlink()
    assert main(["predict", "--exported", str(folder), str(images)]) == 2
    assert "labels.json: no such file" in capsys.readouterr().err
    assert main(["predict", "--exported", str(folder), "--task", str(files["lora"]), str(images)]) == 2
    assert "the folder holds the whole task" in capsys.readouterr().err
