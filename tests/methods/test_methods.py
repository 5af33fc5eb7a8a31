"""What trains and what stays frozen, for every method."""

import pytest
import torch
import torch.nn.functional as F

import adaptformer
from conftest import tiny_vit

TASK = "tasks.default."
EXPECTED_TRAINABLE = {
    "adaptformer": lambda n: n.startswith(TASK) and (".adaptmlp." in n or n.startswith(TASK + "head.")),
    "linear": lambda n: n.startswith(TASK + "head."),
    "vpt": lambda n: n.startswith(TASK + "embeddings.") or n.startswith(TASK + "head."),
    "full": lambda n: True,
}


def sgd_step(model, images, labels):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    model.train()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("method", sorted(EXPECTED_TRAINABLE))
def test_one_step_changes_exactly_the_expected_parameters(method, images):
    model = adaptformer.adapt(tiny_vit(), method)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sgd_step(model, images, torch.tensor([0, 1, 2, 3]))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected = {n for n in before if EXPECTED_TRAINABLE[method](n)}
    if method == "adaptformer":
        # with Up = 0 the first step moves only Up (and the head): Down's gradient is Up^T * ... = 0
        expected = {n for n in expected if "down_proj" not in n}
    assert changed == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in before if EXPECTED_TRAINABLE[method](n)
    }


def test_frozen_parts_stay_in_eval_mode_in_training():
    # a backbone with stochastic depth and dropout: if frozen parts fired, two passes over 64 images would differ
    images = torch.randn(64, 3, 32, 32)
    model = adaptformer.adapt(tiny_vit(drop_path_rate=0.5, proj_drop_rate=0.5), "adaptformer", dropout=0.0)
    model.train()
    assert model.training and model.head.training and model.task.adapter(0).training
    assert not model.blocks[0].attn.training and not model.blocks[0].drop_path2.training
    assert not model.backbone.training and not model.backbone.patch_embed.training
    with torch.no_grad():
        assert torch.equal(model.forward_features(images), model.forward_features(images))


def test_full_fine_tuning_keeps_the_backbone_stochastic():
    images = torch.randn(64, 3, 32, 32)
    model = adaptformer.adapt(tiny_vit(drop_path_rate=0.5), "full").train()
    with torch.no_grad():
        assert not torch.equal(model.forward_features(images), model.forward_features(images))


def test_head_is_batchnorm_without_affine_then_linear():
    model = adaptformer.adapt(tiny_vit(), "linear", num_classes=7)
    bn, linear = model.head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert linear.out_features == 7 and torch.count_nonzero(linear.bias) == 0
    assert 0 < linear.weight.std() < 0.02
    assert model.num_classes == 7


def test_head_batchnorm_statistics_update_only_in_training(images):
    model = adaptformer.adapt(tiny_vit(), "linear")
    model.eval()
    model(images)
    assert torch.count_nonzero(model.head[0].running_mean) == 0
    model.train()
    model(images)
    assert torch.count_nonzero(model.head[0].running_mean) > 0
