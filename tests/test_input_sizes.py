"""Tasks trained at other input sizes on the same weights share one backbone (timm's dynamic image size): each
row runs at its task's size and equals the task's own model; other weights are still refused."""

import numpy as np
import pytest
import torch
from PIL import Image

import adaptformer
from adaptformer.bank import TaskBank
from adaptformer.media import image_tensor
from adaptformer.tasks import preprocessing_of
from adaptformer.tasks.format import read_task

MODEL = "adaptformer/vit-tiny-cifar10"


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes")
    models = {}
    for seed, (name, size, method) in enumerate(
        (("at32", None, "adaptformer"), ("at64", 64, "adaptformer"), ("at48", 48, "vpt"))
    ):
        torch.manual_seed(seed)
        kwargs = {"img_size": size} if size else None
        model = adaptformer.create_model(MODEL, method, num_classes=4, timm_kwargs=kwargs)
        with torch.no_grad():  # non-zero adapters, so the position embeddings matter to the answer
            for parameter in model.task.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        adaptformer.save_task(model, root / f"{name}.safetensors")
        models[name] = model.eval()
    return root, models


def test_tasks_at_three_sizes_share_the_backbone_and_equal_their_own_models(sized):
    root, models = sized
    bank = TaskBank.open([], str(root), device="cpu", precision="fp32")
    assert sorted(bank.tasks) == ["at32", "at48", "at64"], bank.infos()
    images = [Image.fromarray(np.random.default_rng(k).integers(0, 255, (70, 60, 3), dtype=np.uint8)) for k in (0, 1)]
    rows, tasks = [], []
    for image in images:
        for name in ("at32", "at64", "at48"):
            rows += bank.input_rows(image, [name])
            tasks.append(name)
    logits = bank.logits(rows, tasks)  # one mixed request: rows of three shapes
    for row, name, value in zip(rows, tasks, logits, strict=True):
        with torch.no_grad():
            own = models[name](row[None])[0]
        assert tuple(row.shape[-2:]) == {"at32": (32, 32), "at64": (64, 64), "at48": (48, 48)}[name]
        assert torch.allclose(value, own, atol=1e-5), name


def test_a_task_at_another_size_on_other_weights_is_still_refused(sized, tmp_path):
    root, _ = sized
    torch.manual_seed(7)
    other = adaptformer.create_model(
        MODEL, "adaptformer", num_classes=4, pretrained=False, timm_kwargs={"img_size": 64}
    )
    adaptformer.save_task(other, tmp_path / "foreign.safetensors")
    bank = TaskBank.open([str(root / "at32.safetensors")], str(tmp_path), device="cpu", precision="fp32")
    (row,) = [r for r in bank.infos() if r["name"] == "foreign"]
    assert row["usable"] is False and "other backbone weights" in row["error"]


def test_the_native_size_is_bit_identical_with_dynamic_size_on(sized):
    root, models = sized
    bank = TaskBank.open([str(root / "at32.safetensors")], device="cpu", precision="fp32")
    meta, _ = read_task(root / "at32.safetensors")
    x = image_tensor(Image.new("RGB", (32, 32), (10, 200, 30)), preprocessing_of(meta, models["at32"]))
    (value,) = bank.logits([x], ["at32"])
    with torch.no_grad():
        assert torch.equal(value, models["at32"](x[None])[0])
