"""torchrun with 2 CPU processes (gloo) trains exactly like one process with the same global batch."""

import json
import os
import subprocess
import sys

import torch

from adaptformer.runtime.state import load_training_state
from adaptformer.train.loop import fit
from training_helpers import TINY_KWARGS, tiny_train_config

COMMON = dict(epochs=2, warmup_epochs=1, augment=False, dropout=0.0, effective_batch=8, lr=0.05)


def test_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    single = tiny_train_config(tmp_path, batch_size=8, out=str(tmp_path / "single"), **COMMON)
    fit(single)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "adaptformer",
        "train",
        "--dataset",
        "imagefolder",
        "--data-root",
        single.data_root,
        "--model",
        single.model,
        "--checkpoint",
        single.checkpoint,
        "--model-kwargs",
        json.dumps(TINY_KWARGS),
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--batch-size",
        "4",
        "--effective-batch",
        "8",
        "--lr",
        "0.05",
        "--workers",
        "0",
        "--precision",
        "fp32",
        "--no-augment",
        "--dropout",
        "0",
        "--no-tensorboard",
        "--out",
        str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_training_state(tmp_path / "single" / "checkpoint.pt")
    two = load_training_state(tmp_path / "ddp" / "checkpoint.pt")
    assert two["progress"]["global_step"] == one["progress"]["global_step"] == 2 * 3
    for key, value in one["tuned"].items():
        torch.testing.assert_close(two["tuned"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # the head's BatchNorm saw the global batch: its running statistics match too
    assert torch.count_nonzero(two["tuned"]["head.0.running_mean"]) > 0
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["effective_batch"] == 8 and summary["epochs"] == 2
    assert summary["ranks_in_sync"] is True
    assert result.stdout.count("ranks_in_sync") == 1  # only rank 0 prints its summary


def _score_shard(rank: int, world: int, port: int, logits, targets, results) -> None:
    import torch.distributed as dist

    from adaptformer.objectives import get_objective

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        scorer = get_objective("multilabel").scorer(logits.shape[1], torch.device("cpu"))
        scorer.add(logits[rank::world], targets[rank::world])  # the evaluation shard of this rank
        results[rank] = scorer.result()
    finally:
        dist.destroy_process_group()


def test_map_over_two_ranks_equals_one_process():
    import socket

    import torch.multiprocessing as mp

    from adaptformer.objectives import get_objective

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 5, generator=generator)
    targets = (torch.rand(37, 5, generator=generator) < 0.4).float()
    single = get_objective("multilabel").scorer(5, torch.device("cpu"))
    single.add(logits, targets)
    expected = single.result()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_score_shard, args=(2, port, logits, targets, results), nprocs=2)
    for rank in range(2):  # every rank ranks all 37 samples: mAP needs them together, not per-rank sums
        assert results[rank]["samples"] == 37
        assert abs(results[rank]["mAP"] - expected["mAP"]) < 1e-9
