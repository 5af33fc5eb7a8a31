"""The task store: hundreds of task files on one backbone, listed from headers, loaded on demand behind an LRU."""

import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

import adaptformer
from adaptformer import AdaptFormerError
from adaptformer.adapted.model import BackboneSource
from adaptformer.backbones.timm import create_backbone
from adaptformer.bank import ResidencyLimits, TaskBank
from adaptformer.cli import main
from adaptformer.methods.registry import method_names
from conftest import tiny_vit
from training_helpers import TINY_KWARGS, tiny_checkpoint

# every kind of task a bank must mix: bottlenecks, scales, placements, layer subsets, norms, prompts, probes
KINDS = [
    ("adaptformer", dict(bottleneck=2)),
    ("adaptformer", dict(bottleneck=8, scale=0.5, placement="sequential")),
    ("adaptformer", dict(bottleneck=4, layers="top:1")),
    ("adaptformer", dict(bottleneck=3, scale="learnable", layernorm="in", layers=[0])),
    ("adaptformer", dict(bottleneck=5, layernorm="out")),
    ("linear", {}),
    ("vpt", dict(vpt_tokens=2)),
    ("vpt", dict(vpt_tokens=1, vpt_mode="shallow")),
    ("vpt", dict(vpt_tokens=3, vpt_mode="kv")),
]
COUNT = 240
# the GPU check (benchmarks/gpu_check.sh) runs these tests with the bank on a GPU
DEVICE = torch.device(os.environ.get("ADAPTFORMER_TEST_DEVICE", "cpu"))


def backbone(folder):
    """The tiny 'pretrained' backbone of the task files in ``folder`` (its weights file lies beside the folder)."""
    checkpoint = tiny_checkpoint(folder.parent)
    return create_backbone("vit_tiny_patch16_224", pretrained=False, checkpoint=checkpoint, **TINY_KWARGS)


def write_tasks(folder, count=COUNT, seed=0):
    """``count`` task files with random weights (so every task answers differently), each of a kind of KINDS."""
    folder.mkdir(parents=True, exist_ok=True)
    source = BackboneSource("vit_tiny_patch16_224", TINY_KWARGS, "tiny_vit.safetensors")
    model = adaptformer.AdaptedModel(backbone(folder), source)
    generator = torch.Generator().manual_seed(seed)
    for k in range(count):
        method, options = KINDS[k % len(KINDS)]
        task = model.add_task(f"t{k:03d}", method, 2 + k % 7, **options)
        with torch.no_grad():
            for param in task.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
            task.head[0].running_mean.normal_(generator=generator)
        adaptformer.save_task(model, folder / f"t{k:03d}.safetensors", task=f"t{k:03d}")
        model.remove_task(f"t{k:03d}")
    return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("store") / "tasks")


def open_bank(task_dir, **limits):
    bank = TaskBank(
        adaptformer.AdaptedModel(backbone(task_dir)),
        DEVICE,
        "fp32",
        limits=ResidencyLimits(**limits),
        task_dir=task_dir,
    )
    bank.refresh()
    return bank


def inputs(count, seed=1):
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_listing_reads_headers_only_and_loads_nothing(task_dir):
    bank = open_bank(task_dir)
    assert len(bank.tasks) == COUNT and bank.resident == [] and list(bank.model.tasks) == []
    rows = bank.infos()
    assert all(row["usable"] and not row["resident"] for row in rows)
    assert rows[4]["name"] == "t004" and rows[4]["method"] == "adaptformer" and rows[4]["num_classes"] == 6
    assert bank.stats()["listed"] == COUNT and bank.stats()["resident"] == 0


def test_every_sample_its_own_task_equals_each_task_alone(task_dir):
    bank = open_bank(task_dir)
    names = [f"t{k:03d}" for k in range(0, 54, 2)]  # 27 distinct tasks, every kind three times
    x = inputs(len(names))
    mixed = bank.logits(x, names)
    for i, name in enumerate(names):
        alone = adaptformer.load_task(task_dir / f"{name}.safetensors", backbone=backbone(task_dir)).to(DEVICE)
        with torch.no_grad():
            expected = alone.eval()(x[i : i + 1].to(DEVICE))[0]
        torch.testing.assert_close(mixed[i], expected, rtol=1e-5, atol=1e-5, msg=f"sample {i} ({name})")


@pytest.mark.parametrize("gather_from", [1, 10**9])
def test_gathered_and_grouped_paths_agree(task_dir, gather_from):
    """The gathered path (batched matmuls over stacked adapters and heads) and the per-group path agree."""
    bank = open_bank(task_dir)
    names = [f"t{k:03d}" for k in range(18)] * 2
    x = inputs(len(names), seed=2)
    reference = bank.logits(x, names)  # the default rule
    bank.model.gather_from = gather_from
    for got, want in zip(bank.logits(x, names), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_lru_bound_holds_under_a_random_request_stream(task_dir):
    per_task = open_bank(task_dir).residency.estimate_bytes("t000")
    bank = open_bank(task_dir, max_resident=6, max_resident_mb=40 * per_task / 2**20)
    largest = []
    bank.model.backbone.patch_embed.register_forward_pre_hook(lambda *_: largest.append(len(bank.model.tasks)))
    rng = random.Random(0)
    names = bank.tasks[:60]
    for _ in range(40):
        chosen = [rng.choice(names) for _ in range(rng.randint(1, 10))]  # up to 10 tasks: above the bound
        out = bank.logits(inputs(len(chosen), seed=rng.randint(0, 99)), chosen)
        assert len(out) == len(chosen)
        assert len(bank.resident) <= 6 and sum(bank.residency.sizes()) <= 40 * per_task
        assert set(bank.resident) == set(bank.model.tasks)
    assert max(largest) <= 6
    stats = bank.stats()
    assert stats["evictions"] > 0 and stats["loads"] == stats["misses"] and 0 < stats["hit_rate"] < 1
    assert stats["resident"] == len(bank.resident) and stats["resident_mb"] > 0


def test_evict_and_reload_is_bit_identical(task_dir):
    bank = open_bank(task_dir, max_resident=2)
    x = inputs(3)
    first = bank.logits(x, ["t001", "t006", "t008"])
    assert bank.resident == ["t006", "t008"]  # chunks of two: t001 was the least recently used
    bank.logits(x[:2], ["t002", "t003"])
    assert "t001" not in bank.resident
    again = bank.logits(x, ["t001", "t006", "t008"])
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_a_file_changed_on_disk_is_refused_until_refresh(tmp_path):
    folder = write_tasks(tmp_path / "tasks", count=3)
    bank = open_bank(folder, max_resident=1)
    x = inputs(1)
    before = bank.logits(x, ["t000"])[0]
    bank.logits(x, ["t001"])  # t000 is evicted
    replacement = (folder / "t002.safetensors").read_bytes()
    (folder / "t000.safetensors").write_bytes(replacement)
    with pytest.raises(AdaptFormerError, match=r"t000\.safetensors: changed on disk since it was listed"):
        bank.logits(x, ["t000"])
    assert bank.refresh() == {"added": [], "removed": [], "changed": ["t000"]}
    after = bank.logits(x, ["t000"])[0]
    assert torch.equal(after, bank.logits(x, ["t002"])[0]) and not torch.equal(after, before)


def test_refresh_lists_new_files_and_drops_vanished_ones(tmp_path):
    folder = write_tasks(tmp_path / "tasks", count=3)
    bank = open_bank(folder)
    bank.logits(inputs(1), ["t001"])
    (folder / "t002.safetensors").rename(folder / "later.safetensors")
    (folder / "t001.safetensors").unlink()
    assert bank.refresh() == {"added": ["later"], "removed": ["t001", "t002"], "changed": []}
    assert bank.tasks == ["t000", "later"] and bank.resident == [] and list(bank.model.tasks) == []


def test_reading_the_list_while_the_model_thread_changes_it_sees_a_snapshot(tmp_path, monkeypatch):
    """The event loop reads the task list (``tasks``, ``infos``, ``stats``) while the model thread lists, loads and
    evicts. Here the change is made to land in the middle of a read, every time: each row the read builds lists
    another file (what a concurrent refresh does); the read must finish over the list it began with."""
    from adaptformer import bank as bank_module

    folder = write_tasks(tmp_path / "tasks", count=3)
    bank = open_bank(folder)
    extra = [folder / f"t00{k}.safetensors" for k in range(3)]
    added = iter(range(100))
    to_dict = bank_module.TaskInfo.to_dict

    def changing(info):
        k = next(added)
        bank.add(f"late{k}={extra[k % 3]}")  # the list grows while it is being read
        return to_dict(info)

    monkeypatch.setattr(bank_module.TaskInfo, "to_dict", changing)
    rows = bank.infos()
    assert [row["name"] for row in rows] == ["t000", "t001", "t002"]
    assert bank.stats()["listed"] == 6 and len(bank.tasks) == 6


def test_the_backbone_is_hashed_once_for_many_task_files(task_dir, monkeypatch):
    import adaptformer.adapted.model as model_module

    calls = []
    original = model_module.hash_tensors
    monkeypatch.setattr(model_module, "hash_tensors", lambda items: calls.append(1) or original(items))
    bank = open_bank(task_dir)
    bank.logits(inputs(20), bank.tasks[:20])
    assert len(calls) == 1
    model = adaptformer.AdaptedModel(backbone(task_dir))
    for k in range(10):
        adaptformer.apply_task(model, task_dir / f"t{k:03d}.safetensors")
    assert len(calls) == 2  # one more backbone, hashed once for ten files
    with torch.no_grad():
        model.backbone.blocks[0].mlp.fc1.weight.add_(1.0)  # the weights changed: the cache knows
    assert model.backbone_fingerprint() != bank.model.backbone_fingerprint() and len(calls) == 3


def test_corrupt_and_foreign_files_are_listed_unusable_and_never_stop_the_others(tmp_path):
    folder = write_tasks(tmp_path / "tasks", count=4)
    good = (folder / "t000.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (folder / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (folder / "text.safetensors").write_text("not a task")
    foreign = adaptformer.AdaptedModel(tiny_vit(seed=7))
    foreign.add_task("x", "linear", 3)
    adaptformer.save_task(foreign, folder / "foreign.safetensors")
    whole = adaptformer.adapt(backbone(folder), "full", num_classes=3)
    adaptformer.save_task(whole, folder / "whole.safetensors")
    nan = adaptformer.AdaptedModel(backbone(folder))
    nan.add_task("n", "linear", 3)
    with torch.no_grad():
        nan.tasks["n"].head[1].weight.fill_(float("nan"))
    adaptformer.save_task(nan, folder / "poisoned.safetensors")

    bank = open_bank(folder)
    rows = {row["name"]: row for row in bank.infos()}
    unusable = {name: row["error"] for name, row in rows.items() if not row["usable"]}
    assert set(unusable) == {"truncated", "garbage", "text", "foreign", "whole"}
    for name, reason in unusable.items():
        assert f"{name}.safetensors" in reason and "\n" not in reason
    assert "other backbone weights" in unusable["foreign"] and "full fine-tuning" in unusable["whole"].lower()
    assert "not a readable safetensors file" in unusable["garbage"]
    # the tensors of "poisoned" are only seen when it is loaded: refused then, and the others go on
    with pytest.raises(AdaptFormerError, match="non-finite"):
        bank.logits(inputs(2), ["t000", "poisoned"])
    assert "poisoned" not in bank.model.tasks
    assert len(bank.logits(inputs(4), ["t000", "t001", "t002", "t003"])) == 4
    with pytest.raises(AdaptFormerError, match="no such usable task: task file .*foreign"):
        bank.logits(inputs(1), ["foreign"])


def test_residency_limits_are_checked():
    with pytest.raises(AdaptFormerError, match="--max-resident: expected a positive"):
        ResidencyLimits(max_resident=0)
    with pytest.raises(AdaptFormerError, match="--max-resident-mb: expected a positive"):
        ResidencyLimits(max_resident_mb=-1)


def test_predict_with_a_task_directory(tmp_path, capsys):
    folder = write_tasks(tmp_path / "tasks", count=5)
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
    common = ["--task-dir", str(folder), "--checkpoint", str(tmp_path / "tiny_vit.safetensors"), "--precision", "fp32"]
    assert main(["predict", *common, "--task", "t001", "--task", "t003", str(image), "--json", "--top-k", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["task"] for line in lines] == ["t001", "t003"]
    assert main(["predict", *common, "--max-resident", "2", str(image), "--json"]) == 0  # every task of the folder
    assert [json.loads(line)["task"] for line in capsys.readouterr().out.splitlines()] == [f"t00{k}" for k in range(5)]
    assert main(["predict", *common, "--task", "nope", str(image)]) == 2
    assert "task 'nope'" in capsys.readouterr().err
    assert main(["predict", *common, "--max-resident", "0", str(image)]) == 2
    assert "--max-resident" in capsys.readouterr().err


def test_a_store_serving_in_bf16_keeps_its_resident_tasks_at_half_the_memory(task_dir):
    """Adapters, prompts and updates resident in bf16 (heads in fp32); answers as the fp32-resident store's to
    bf16 rounding, which the computation under bf16 autocast rounds to anyway."""

    def bank(task_precision):
        model = adaptformer.AdaptedModel(backbone(task_dir))
        store = TaskBank(model, DEVICE, "bf16", task_dir=task_dir, task_precision=task_precision)
        store.refresh()
        return store

    half, full = bank("auto"), bank("fp32")
    names = [f"t{k:03d}" for k in range(len(KINDS))]
    x = inputs(len(names))
    for a, b in zip(half.logits(x, names), full.logits(x, names), strict=True):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)
    blocks = [p for n, p in half.model.tasks.named_parameters() if ".blocks." in f".{n}" or n.startswith("blocks")]
    heads = [p for n, p in half.model.tasks.named_parameters() if ".head." in n]
    assert blocks and all(p.dtype == torch.bfloat16 for p in blocks)
    assert heads and all(p.dtype == torch.float32 for p in heads)

    def block_bytes(store):
        return sum(t.numel() * t.element_size() for n, t in store.model.tasks.state_dict().items() if ".blocks." in n)

    assert block_bytes(half) * 2 == block_bytes(full) > 0
    for tensor in half.model.tasks.state_dict().values():  # each owns its bytes: no file buffer kept alive
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    assert sum(half.residency.sizes()) < sum(full.residency.sizes())
    for name in names:  # the estimate a chunking decision uses is what the task then takes
        assert half.residency.estimate_bytes(name) == sum(
            t.numel() * t.element_size() for t in half.model.tasks[name].state_dict().values()
        )
    with pytest.raises(AdaptFormerError, match=r"--task-precision 'half': expected one of auto, fp32"):
        bank("half")


def test_prefetched_files_are_read_on_the_io_thread_once_and_loading_then_reads_nothing(task_dir, monkeypatch):
    import threading

    from adaptformer.store import residency

    reads = []
    read = residency.read_task_file

    def recording(path, **kwargs):
        reads.append((path.stem, threading.current_thread().name))
        return read(path, **kwargs)

    monkeypatch.setattr(residency, "read_task_file", recording)
    names = ["t000", "t001", "t002"]
    alone = open_bank(task_dir).logits(inputs(3), names)  # another bank, without prefetching
    bank = open_bank(task_dir, max_resident=4)
    reads.clear()
    bank.prefetch(names + ["nope"])  # an unknown name is passed over
    values = bank.logits(inputs(3), names)
    assert sorted(stem for stem, _ in reads) == names  # each file read once
    assert all(thread.startswith("adaptformer-io") for _, thread in reads)  # and not on the model's thread
    for a, b in zip(values, alone, strict=True):
        torch.testing.assert_close(a, b)


def _handmade_task_file(path, meta, layout, data):
    """A safetensors file written byte by byte: ``layout`` is its tensor table as written, ``data`` what follows."""
    header = json.dumps({"__metadata__": {"adaptformer": json.dumps(meta)}, **layout}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


def test_a_task_file_is_read_into_one_buffer_and_its_tensors_equal_safetensors_own(tmp_path):
    from safetensors.torch import load_file, save_file

    from adaptformer.tasks.format import read_task_file, read_task_header

    folder = write_tasks(tmp_path / "tasks", count=2)
    meta = read_task_header(folder / "t000.safetensors").meta
    tensors = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(7).to(torch.bfloat16),
        "i64": torch.arange(4),
        "u8": torch.arange(9, dtype=torch.uint8),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, str(tmp_path / "kinds.safetensors"), metadata={"adaptformer": json.dumps(meta)})
    header, read = read_task_file(tmp_path / "kinds.safetensors")
    expected = load_file(str(tmp_path / "kinds.safetensors"))
    assert read.keys() == expected.keys()
    for key, value in expected.items():
        assert read[key].dtype == value.dtype and torch.equal(read[key], value), key
    spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in read.values() if t.numel()]
    file_size = (tmp_path / "kinds.safetensors").stat().st_size
    assert max(e for _, e in spans) - min(b for b, _ in spans) < file_size  # views of one buffer, not copies
    assert header.tensor_bytes == sum(t.numel() * t.element_size() for t in tensors.values())

    # an odd offset (a file safetensors would never write, but valid): the float tensor is copied out, aligned
    layout = {"odd": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
              "x": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}  # fmt: skip
    values = torch.tensor([1.5, -2.25])
    data = b"\x07" + values.numpy().tobytes() + b" " * 3
    _header, odd = read_task_file(_handmade_task_file(tmp_path / "odd.safetensors", meta, layout, data))
    assert torch.equal(odd["x"], values) and odd["odd"].tolist() == [7]


def test_files_of_one_kind_share_one_checked_table_and_a_short_file_is_still_refused(tmp_path):
    from adaptformer.tasks.format import read_task_file, read_task_header

    folder = tmp_path / "tasks"
    model = adaptformer.AdaptedModel(backbone(folder))
    for name in ("a", "b"):
        model.add_task(name, "adaptformer", 3, bottleneck=4)
        adaptformer.save_task(model, folder / f"{name}.safetensors", task=name)
    a, b = (read_task_header(folder / f"{name}.safetensors") for name in ("a", "b"))
    assert a.tensors is b.tensors  # one table for both (and for ten thousand such files)
    with pytest.raises(TypeError):
        a.tensors["head.1.weight"] = None  # shared, so read-only
    import adaptformer.tasks.format as task_format

    with pytest.MonkeyPatch.context() as patch:  # a table too long to keep is checked each time, never kept
        patch.setattr(task_format._TensorTables, "MAX_KEPT_CHARS", 10)
        fresh = task_format._TensorTables()
        patch.setattr(task_format, "_TENSOR_TABLES", fresh)
        c, d = (read_task_header(folder / f"{name}.safetensors") for name in ("a", "b"))
        assert c.tensors is not d.tensors and c.tensors == a.tensors and not fresh._tables
    whole = (folder / "b.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(whole[:-4])  # the same header, its data four bytes short
    with pytest.raises(AdaptFormerError, match=r"cut\.safetensors: not a readable safetensors file \(tensor"):
        read_task_header(folder / "cut.safetensors")
    with pytest.raises(AdaptFormerError, match=r"cut\.safetensors: not a readable safetensors file \(tensor"):
        read_task_file(folder / "cut.safetensors")


def test_a_listing_pass_looks_up_the_backbone_fingerprint_once_whatever_the_number_of_files(task_dir, monkeypatch):
    """Confirming the model's cached fingerprint walks every backbone tensor: once per refresh, not per file."""
    from adaptformer.adapted.model import AdaptedModel

    lookups = []
    original = AdaptedModel.backbone_fingerprint
    monkeypatch.setattr(AdaptedModel, "backbone_fingerprint", lambda self: lookups.append(self) or original(self))
    bank = open_bank(task_dir)
    assert len(bank.tasks) == COUNT and lookups == [bank.model]
    foreign = adaptformer.AdaptedModel(tiny_vit(seed=7))
    foreign.add_task("x", "linear", 3)
    path = adaptformer.save_task(foreign, task_dir.parent / "foreign.safetensors")
    with pytest.raises(AdaptFormerError, match="other backbone weights"):
        bank.add(str(path))  # still checked against the backbone's weights
    assert sum(model is bank.model for model in lookups) == 2


def test_tasks_of_one_kind_are_copies_of_one_template_and_share_nothing_mutable(task_dir, monkeypatch):
    """A store builds each kind of task once (on the meta device) and copies it per file: every copy has its own
    modules, parameters and classes, and answers as the file loaded the usual way does; the empty hook tables are
    one read-only table (a hook cannot reach every task of the kind through it: registering one is refused, on a
    copy too, whose tables must not become one table either)."""
    import copy
    import pickle

    from adaptformer.adapted.model import AdaptedModel

    builds = []
    original = AdaptedModel.build_task
    monkeypatch.setattr(AdaptedModel, "build_task", lambda self, *a, **k: builds.append(a) or original(self, *a, **k))
    bank = open_bank(task_dir)
    same_kind = [f"t{k:03d}" for k in range(0, COUNT, 9 * 7)]  # four files of KINDS[0] with 2 classes
    x = inputs(len(same_kind))
    values = bank.logits(x, same_kind)
    assert len(builds) == 1
    a, b = (bank.model.tasks[name] for name in same_kind[:2])
    modules_a, modules_b = dict(a.named_modules()), dict(b.named_modules())
    assert modules_a.keys() == modules_b.keys()
    assert all(modules_a[k] is not modules_b[k] for k in modules_a)
    assert all(modules_a[k]._forward_hooks is modules_b[k]._forward_hooks for k in modules_a)
    assert all(modules_a[k]._parameters is not modules_b[k]._parameters for k in modules_a)
    head = a.head[-1]
    with pytest.raises(AdaptFormerError, match="task store"):
        head.register_forward_hook(lambda module, args, out: out * 0)
    with pytest.raises(AdaptFormerError, match="task store"):
        head.register_forward_pre_hook(lambda module, args: None)
    assert not head._forward_hooks and not b.head[-1]._forward_hooks
    for duplicate in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        with pytest.raises(AdaptFormerError, match="task store"):
            duplicate.head[-1].register_forward_hook(lambda module, args, out: out * 0)
        assert not duplicate.head[-1]._forward_hooks_with_kwargs and not duplicate.head[-1]._forward_hooks
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(a.parameters(), b.parameters(), strict=True))
    a.classes.append("extra")
    assert "extra" not in b.classes
    for name, value in zip(same_kind, values, strict=True):
        alone = adaptformer.apply_task(adaptformer.AdaptedModel(backbone(task_dir)), task_dir / f"{name}.safetensors")
        with torch.no_grad():
            torch.testing.assert_close(value, alone.eval()(x[same_kind.index(name)][None])[0])


def test_non_finite_values_are_found_in_every_float_precision():
    from adaptformer.adapted.model import check_task_tensors

    own = {"a": torch.zeros(3), "b": torch.zeros(2, dtype=torch.bfloat16), "n": torch.zeros((), dtype=torch.long)}
    good = {"a": torch.ones(3), "b": torch.ones(2, dtype=torch.bfloat16), "n": torch.tensor(5)}
    check_task_tensors(own, good, "f")
    for key, bad in (("a", float("inf")), ("b", float("nan")), ("b", float("-inf"))):
        tensors = {k: v.clone() for k, v in good.items()}
        tensors[key][1] = bad
        with pytest.raises(AdaptFormerError, match=rf"f: non-finite values \(NaN or inf\) in \['{key}'\]"):
            check_task_tensors(own, tensors, "f")


def test_a_task_used_again_outlives_a_stream_of_tasks_used_once(task_dir):
    """The cache is a segmented LRU: under a stream of tasks asked once, a task asked again stays resident (a
    plain LRU would have evicted it after four others); the bound holds throughout."""
    bank = open_bank(task_dir, max_resident=4)
    x = inputs(1)
    bank.logits(x, ["t000"])
    bank.logits(x, ["t000"])  # used again while resident: protected
    for k in range(1, 12):
        bank.logits(x, [f"t{k:03d}"])
        assert "t000" in bank.resident and len(bank.resident) <= 4
    for k in range(12, 30):  # protected tasks, too, give way once they stop being used: all four reused now
        bank.logits(x, [f"t{k:03d}"])
        bank.logits(x, [f"t{k:03d}"])
    assert "t000" not in bank.resident and len(bank.resident) == 4


def test_a_file_cut_short_while_it_is_read_is_a_one_line_error(tmp_path, monkeypatch):
    """A task file truncated in place between its size being taken and its bytes being read (another process
    rewriting it) is refused in one line; the read never reaches past the bytes there are."""
    import adaptformer.tasks.format as task_format

    folder = write_tasks(tmp_path / "tasks", count=1)
    real_fstat = os.fstat

    def larger(fd):  # the size as it was before the file was cut
        stat = real_fstat(fd)
        return os.stat_result((*stat[:6], stat.st_size + 4096, *stat[7:]))

    monkeypatch.setattr(task_format.os, "fstat", larger)
    with pytest.raises(AdaptFormerError, match=r"t000\.safetensors: changed on disk while it was read; try again"):
        task_format.read_task_file(folder / "t000.safetensors")


@pytest.mark.parametrize("method", ["lora", "bitfit", "ssf"])
def test_every_method_a_store_serves_answers_as_its_file_applied_alone(tmp_path, method):
    """Tasks of methods outside KINDS (built from their templates too) answer as ``apply_task`` of their file."""
    folder = tmp_path / "tasks"
    model = adaptformer.AdaptedModel(backbone(folder))
    generator = torch.Generator().manual_seed(3)
    for k in range(2):
        task = model.add_task(f"{method}{k}", method, 3)
        with torch.no_grad():
            for param in task.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
        adaptformer.save_task(model, folder / f"{method}{k}.safetensors", task=f"{method}{k}")
        model.remove_task(f"{method}{k}")
    bank = open_bank(folder)
    x = inputs(2)
    for k, value in enumerate(bank.logits(x, [f"{method}0", f"{method}1"])):
        alone = adaptformer.apply_task(adaptformer.AdaptedModel(backbone(folder)), folder / f"{method}{k}.safetensors")
        with torch.no_grad():
            torch.testing.assert_close(value, alone.eval()(x[k : k + 1])[0])


SHARED_BACKBONE_METHODS = [m for m in method_names() if m != "full"]


def _int8_store(folder, precision="bf16", **limits):
    store = TaskBank(
        adaptformer.AdaptedModel(backbone(folder)),
        DEVICE,
        precision,
        limits=ResidencyLimits(**limits),
        task_dir=folder,
        task_precision="int8",
    )
    store.refresh()
    return store


def test_a_store_with_int8_weights_holds_them_at_a_quarter_and_answers_as_fp32_to_their_rounding(task_dir):
    """--task-precision int8: the Linear weight matrices inside the blocks as int8 (one scale per row), the other
    block tensors in bf16, heads fp32; answers as the fp32-resident store's to the rounding that adds."""
    from adaptformer.store.int8_weights import Int8Linear

    names = [f"t{k:03d}" for k in range(len(KINDS))]
    x = inputs(len(names))
    int8 = _int8_store(task_dir)
    full = TaskBank(
        adaptformer.AdaptedModel(backbone(task_dir)), DEVICE, "bf16", task_dir=task_dir, task_precision="fp32"
    )
    full.refresh()
    for a, b in zip(int8.logits(x, names), full.logits(x, names), strict=True):
        torch.testing.assert_close(a, b, atol=6e-2, rtol=6e-2)
    tasks = int8.model.tasks
    quantized = [m for m in tasks.modules() if isinstance(m, Int8Linear)]
    assert quantized and all(m.weight_int8.dtype == torch.int8 and m.weight.dtype == torch.bfloat16 for m in quantized)
    assert not any(type(m) is torch.nn.Linear for n, m in tasks.named_modules() if ".blocks." in f".{n}.")
    blocks = {n: t for n, t in tasks.state_dict().items() if ".blocks." in n}
    assert {t.dtype for t in blocks.values()} == {torch.int8, torch.float32, torch.bfloat16}
    assert all(t.dtype != torch.float32 or n.endswith(".weight_scale") for n, t in blocks.items())
    assert all(
        t.dtype == torch.float32 for n, t in tasks.state_dict().items() if ".head." in n and t.is_floating_point()
    )
    for tensor in tasks.state_dict().values():  # each owns its memory: no file's buffer kept alive by a head
        assert tensor.untyped_storage().resizable()  # (a tensor over a file's buffer is not)
    for name in names:  # the estimate a chunking decision uses is what the task then takes
        assert int8.residency.estimate_bytes(name) == sum(
            t.numel() * t.element_size() for t in tasks[name].state_dict().values()
        )
    adapters = [n for n in names if int8.info(n).method == "adaptformer"]
    half = TaskBank(adaptformer.AdaptedModel(backbone(task_dir)), DEVICE, "bf16", task_dir=task_dir)
    half.refresh()
    half.logits(x[: len(adapters)], adapters)
    for name in adapters:  # the weight matrices: int8 and their scales, against bf16
        held = tasks[name].state_dict()
        int8_bytes = sum(t.nbytes for n, t in held.items() if n.endswith((".weight_int8", ".weight_scale")))
        weights = half.model.tasks[name].state_dict()
        half_bytes = sum(t.nbytes for n, t in weights.items() if n.endswith("_proj.weight"))
        assert 0 < int8_bytes < 0.75 * half_bytes  # width 32, bottlenecks 2-8: the scales weigh; 0.51 at ViT-B


def test_int8_weights_mix_in_one_batch_as_each_task_alone_and_reload_bit_identically(task_dir):
    store = _int8_store(task_dir, max_resident=3)
    names = [f"t{k:03d}" for k in range(len(KINDS))]
    x = inputs(len(names), seed=4)
    mixed = store.logits(x, names)  # chunks of three tasks, evicting as it goes
    for i, name in enumerate(names):
        torch.testing.assert_close(store.logits(x[i : i + 1], [name])[0], mixed[i], rtol=2e-2, atol=2e-2)
    again = store.logits(x, names)
    assert all(torch.equal(a, b) for a, b in zip(mixed, again, strict=True))
    assert store.stats()["evictions"] > 0


@pytest.mark.parametrize("method", SHARED_BACKBONE_METHODS)
def test_every_method_serves_with_int8_weights_close_to_its_file_applied_alone(tmp_path, method):
    folder = tmp_path / "tasks"
    model = adaptformer.AdaptedModel(backbone(folder))
    generator = torch.Generator().manual_seed(5)
    task = model.add_task(method, method, 3)
    with torch.no_grad():
        for param in task.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    adaptformer.save_task(model, folder / f"{method}.safetensors", task=method)
    store = _int8_store(folder, precision="fp32")
    x = inputs(2, seed=6)
    got = [value.cpu() for value in store.logits(x, [method, method])]
    alone = adaptformer.apply_task(adaptformer.AdaptedModel(backbone(folder)), folder / f"{method}.safetensors")
    with torch.no_grad():
        want = alone.eval()(x)
    for k in range(2):
        torch.testing.assert_close(got[k], want[k], atol=3e-2, rtol=3e-2)
    held = store.model.tasks[method].state_dict()
    assert store.residency.estimate_bytes(method) == sum(t.numel() * t.element_size() for t in held.values())


def test_an_int8_store_counts_what_a_task_holds_even_where_its_estimate_misjudges_it(task_dir, monkeypatch):
    from adaptformer.store import residency

    monkeypatch.setattr(residency, "held_as_int8", lambda key, shape: False)  # as for a plugin's layer it misses
    store = _int8_store(task_dir)
    store.logits(inputs(1), ["t000"])
    task = store.model.tasks["t000"]
    held = sum(t.nbytes for t in (*task.parameters(), *task.buffers()))
    assert store.residency.estimate_bytes("t000") > held
    assert store.residency.sizes() == [held]


@pytest.mark.parametrize(("method", "options"), [("adaptformer", dict(bottleneck=1)), ("lora", dict(lora_rank=1))])
def test_a_rank_one_matrix_takes_one_scale_as_its_estimate_says(tmp_path, method, options):
    folder = tmp_path / "tasks"
    model = adaptformer.AdaptedModel(backbone(folder))
    model.add_task("r1", method, 3, **options)
    adaptformer.save_task(model, folder / "r1.safetensors", task="r1")
    store = _int8_store(folder)
    store.logits(inputs(1), ["r1"])
    held = store.model.tasks["r1"].state_dict()
    assert store.residency.estimate_bytes("r1") == sum(t.nbytes for t in held.values())
    assert any(n.endswith(".weight_scale") and t.numel() == 1 for n, t in held.items())
