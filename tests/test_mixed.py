"""Mixed-task batches: one pass of the backbone, every sample through its own task, equal to each task alone."""

import pytest
import torch

import adaptformer
from adaptformer import AdaptFormerError
from conftest import tiny_vit

TASKS = {
    "af_parallel": ("adaptformer", dict(bottleneck=4)),
    "af_sequential_top": ("adaptformer", dict(bottleneck=8, placement="sequential", layers="top:1")),
    "af_ln_learnable": ("adaptformer", dict(bottleneck=2, layernorm="in", scale="learnable", layers=[0])),
    "vpt_deep2": ("vpt", dict(vpt_tokens=2)),
    "vpt_shallow3": ("vpt", dict(vpt_tokens=3, vpt_mode="shallow")),
    "vpt_bottom1": ("vpt", dict(vpt_tokens=1, layers="bottom:1")),
    "vpt_kv2": ("vpt", dict(vpt_tokens=2, vpt_mode="kv")),
    "vpt_kv_top1": ("vpt", dict(vpt_tokens=4, vpt_mode="kv", layers="top:1")),
    "linear": ("linear", {}),
}


def bank(depth=3, tasks=TASKS):
    model = adaptformer.AdaptedModel(tiny_vit(depth=depth))
    generator = torch.Generator().manual_seed(0)
    for k, (name, (method, options)) in enumerate(tasks.items()):
        task = model.add_task(name, method, 3 + k, **options)
        with torch.no_grad():
            for param in task.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
            task.head[0].running_mean.normal_(generator=generator)
    return model.eval()


def test_every_sample_equals_its_own_task(images):
    model = bank()
    x = torch.cat([images, images.flip(0), images * 0.5])  # 12 samples
    names = list(TASKS)
    assignment = [names[i % len(names)] for i in range(len(x))]
    with torch.no_grad():
        mixed = model(x, tasks=assignment)
        alone = {name: model(x, task=name) for name in names}
    for i, name in enumerate(assignment):
        assert mixed[i].shape == (3 + names.index(name),)
        torch.testing.assert_close(mixed[i], alone[name][i], rtol=1e-5, atol=1e-5, msg=f"sample {i} ({name})")


def test_one_pass_of_the_backbone(images):
    model = bank()
    calls = []
    model.backbone.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    model.backbone.blocks[0].mlp.fc1.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    with torch.no_grad():
        model(images, tasks=["af_parallel", "vpt_deep2", "linear", "vpt_shallow3"])
    assert calls == [1, 4]  # patch embedding once, the frozen MLP once for the whole batch


def test_a_batch_of_one_task_is_that_task_exactly(images):
    model = bank(tasks={"a": TASKS["af_parallel"], "b": TASKS["vpt_deep2"]})
    with torch.no_grad():
        mixed = model(images, tasks=["b"] * 4)
        assert torch.equal(torch.stack(mixed), model(images, task="b"))


def test_refusals(images):
    model = bank(tasks={"a": TASKS["linear"]})
    with pytest.raises(AdaptFormerError, match="no such task"):
        model(images, tasks=["a", "a", "a", "missing"])
    with pytest.raises(AdaptFormerError, match="3 names for a batch of 4"):
        model(images, tasks=["a"] * 3)
    full = adaptformer.adapt(tiny_vit(), "full")
    with pytest.raises(AdaptFormerError, match="full fine-tuning"):
        full(images, tasks=["default"] * 4)


def test_serving_without_a_graph_answers_as_with_one(images):
    """Without autograd the adapters accumulate into the MLP branch in place (single task and gathered mixed
    batch): the same numbers as the out-of-place products that training takes."""
    model = bank()
    x = torch.cat([images, images.flip(0)])
    names = [n for n in TASKS if n.startswith("af_")]
    assignment = [names[i % len(names)] for i in range(len(x))]
    mixed_graph, alone_graph = model(x, tasks=assignment), model(x, task="af_parallel")  # out of place
    with torch.no_grad():
        mixed, alone = model(x, tasks=assignment), model(x, task="af_parallel")
    assert torch.equal(alone, alone_graph.detach())
    for served, trained in zip(mixed, mixed_graph, strict=True):
        assert torch.equal(served, trained.detach())
