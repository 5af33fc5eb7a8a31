"""A method is one package: a toy method written in a temporary package outside the project (as a user would)
trains, is tuned, is benchmarked, is saved, is served from the task store and over HTTP, and is a CLI option,
without a line changed anywhere else."""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import adaptformer
from adaptformer.bank import TaskBank
from adaptformer.experiments.benchmark import benchmark_runs, command_line
from adaptformer.experiments.tune import check_space, default_space
from adaptformer.methods import registry
from adaptformer.serve.app import create_app
from adaptformer.train.config import TrainConfig
from training_helpers import TINY_KWARGS, tiny_train_values

TOY = '''
"""A toy method: a learned per-channel gain on the MLP branch of every block, m * (1 + g)."""
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from adaptformer.methods import MethodConfig, Task, register_method
from adaptformer.utils.options import check_number, option


@dataclass(frozen=True)
class ToyGainConfig(MethodConfig):
    """A learned gain on each MLP branch (a toy); trains gains + head."""

    name: ClassVar[str] = "toygain"
    label: ClassVar[str] = "Toy gain"
    tune_axes: ClassVar[tuple] = (("toy_start", (0.0, 0.5)),)
    learning_rates: ClassVar[tuple] = (0.2, 0.3)
    benchmark_options: ClassVar[dict] = {"blr": 0.07}

    toy_start: float = option(0.0, "the gains' start")

    def validate(self):
        super().validate()
        check_number("toy_start", self.toy_start, 0.0)


class ToyGainTask(Task):
    def __init__(self, config, classes, backbone):
        super().__init__(config, classes, backbone)
        start = lambda i: torch.full((backbone.branch_width(i),), config.toy_start)
        self.gains = nn.ParameterDict({str(i): nn.Parameter(start(i)) for i in range(backbone.depth)})

    def mlp_branch(self, index, m, residual):
        return m * (1 + self.gains[str(index)])


register_method(ToyGainConfig, ToyGainTask)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    package = tmp_path / "plugins" / "toy_gain"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(package.parent))
    importlib.import_module("toy_gain")
    yield package.parent
    registry.METHODS.pop("toygain", None)
    sys.modules.pop("toy_gain", None)


def test_a_method_in_its_own_package_works_everywhere(toy, tmp_path):
    assert "toygain" in registry.method_names()
    # train (the typed config from flat options, the gains trained, a task file written)
    values = tiny_train_values(tmp_path, method="toygain", toy_start=0.25, epochs=1, out=str(tmp_path / "run"))
    config = TrainConfig.from_flat(values)
    assert config.method_config.toy_start == 0.25 and config.method_config.title() == "Toy gain"
    from adaptformer.train.loop import fit

    fit(config)
    task_file = tmp_path / "run" / "last.safetensors"

    def backbone():
        return adaptformer.create_backbone(
            "vit_tiny_patch16_224", pretrained=False, checkpoint=values["checkpoint"], **TINY_KWARGS
        )

    model = adaptformer.apply_task(backbone(), task_file).eval()
    gains = torch.cat([g.detach().flatten() for g in model.task.gains.values()])
    assert not torch.allclose(gains, torch.full_like(gains, 0.25))  # they trained
    # tune: its learning rates and its own axis, every value a valid configuration
    space = default_space("toygain")
    assert space[0] == ("lr", [0.2, 0.3]) and ("toy_start", [0.0, 0.5]) in space
    check_space(values, space)
    # benchmark: known by name, its fixed options applied, its flag in the printed command
    (run,) = benchmark_runs("vtab", str(tmp_path), "vit_tiny_patch16_224", ["toygain"], only=["dtd"])
    assert run.values["blr"] == 0.07 and "--method toygain" in command_line(run, tmp_path / "bench")
    # the task store and the server answer with the trained task
    x = torch.rand(1, 3, 32, 32)
    bank = TaskBank(adaptformer.AdaptedModel(backbone()), torch.device("cpu"), "fp32", task_dir=tmp_path / "run")
    bank.refresh()
    image = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype("uint8"))
    assert "last" in bank.tasks
    with TestClient(create_app(bank, None), base_url="http://localhost") as client:
        image.save(tmp_path / "x.png")
        answer = client.post("/predict/last", files={"file": ("x.png", (tmp_path / "x.png").read_bytes())})
        assert answer.status_code == 200, answer.text
        (direct,) = bank.predict_images([image], ["last"])
        assert answer.json()["top_k"] == direct["top_k"]
        assert {row["label"] for row in direct["top_k"]} == set(model.classes)


def test_a_plugin_named_in_the_environment_is_a_cli_method(toy):
    env = {"ADAPTFORMER_PLUGINS": "toy_gain", "PYTHONPATH": str(toy)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "adaptformer",
            "params",
            "--method",
            "toygain",
            "--toy-start",
            "0.5",
            "--json",
            "--model",
            "vit_tiny_patch16_224",
            "--model-kwargs",
            '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}',
            "--num-classes",
            "3",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["adapters"] == 2 * 32  # a gain per channel of each block's MLP branch (width 32)
    broken = subprocess.run(
        [sys.executable, "-m", "adaptformer", "params", "--method", "toygain"],
        capture_output=True,
        text=True,
        env={**os.environ, "ADAPTFORMER_PLUGINS": "no_such_plugin"},
        timeout=300,
    )
    assert broken.returncode != 0
    assert "ADAPTFORMER_PLUGINS: cannot import 'no_such_plugin'" in broken.stderr
    assert "Traceback" not in broken.stderr
