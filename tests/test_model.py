"""Named tasks on one frozen backbone: add, switch, remove, what trains, and refusals."""

import copy

import pytest
import torch

import adaptformer
from adaptformer import AdaptFormerConfig, AdaptFormerError, VPTConfig
from conftest import features, tiny_vit


def test_tasks_are_independent_and_switchable(images):
    backbone = tiny_vit()
    model = adaptformer.adapt(copy.deepcopy(backbone), "adaptformer", num_classes=3, bottleneck=4)
    model.add_task("prompts", VPTConfig(vpt_tokens=2), classes=["a", "b"], activate=False)
    assert model.active_task == "default" and list(model.tasks) == ["default", "prompts"]
    with torch.no_grad():
        model.tasks["default"].adapter(0).up_proj.weight.normal_()
    model.eval()
    adapted = model(images)
    assert adapted.shape == (4, 3) and model(images, task="prompts").shape == (4, 2)
    assert model.active_task == "default"  # task= routes one call only
    model.set_task("prompts")
    # only the active task requires grad; the other task's adapters do not act on it
    assert all(p.requires_grad for p in model.tasks["prompts"].parameters())
    assert not any(p.requires_grad for p in model.tasks["default"].parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.set_task("default")
    assert torch.equal(model(images), adapted)


def test_each_task_has_its_own_head_and_fc_norm_for_mean_pooled_backbones(images):
    backbone = tiny_vit(global_pool="avg", fc_norm=True)
    pretrained_norm = copy.deepcopy(backbone.fc_norm)
    model = adaptformer.adapt(backbone, "linear", num_classes=3)
    model.add_task("other", "adaptformer", 4, bottleneck=2)
    first, second = model.tasks["default"].fc_norm, model.tasks["other"].fc_norm
    assert first is not second and torch.equal(first.weight, pretrained_norm.weight)
    assert isinstance(model.backbone.fc_norm, torch.nn.Identity)
    report = model.parameter_report("other")
    assert report.norms == 2 * 32 and report.adapters == 2 * (2 * 32 * 2 + 32 + 2)
    assert set(model.task_state_dict("default")) >= {"fc_norm.weight", "fc_norm.bias", "head.1.weight"}


def test_full_fine_tuning_cannot_share_the_backbone():
    model = adaptformer.adapt(tiny_vit(), "adaptformer")
    with pytest.raises(AdaptFormerError, match="full fine-tuning trains the backbone"):
        model.add_task("full", "full", 3)
    full = adaptformer.adapt(tiny_vit(), "full")
    assert full.backbone_trains and full.backbone_fingerprint() is None
    with pytest.raises(AdaptFormerError, match="cannot share it"):
        full.add_task("more", "linear", 3)
    full.train()
    assert full.backbone.training and all(p.requires_grad for p in full.backbone.parameters())


def test_task_names_and_lookups_fail_clearly():
    model = adaptformer.adapt(tiny_vit(), "linear")
    with pytest.raises(AdaptFormerError, match="already has a task"):
        model.add_task("default", "linear", 3)
    with pytest.raises(AdaptFormerError, match="without '.'"):
        model.add_task("a.b", "linear", 3)
    with pytest.raises(AdaptFormerError, match="no such task"):
        model.set_task("missing")
    with pytest.raises(AdaptFormerError, match="unknown option.*bottleneck is an option of adaptformer"):
        model.add_task("x", "linear", 3, bottleneck=4)
    with pytest.raises(AdaptFormerError, match="already serves an adapted model"):
        adaptformer.AdaptedModel(model.backbone)


def test_removing_every_task_leaves_the_pretrained_backbone(images):
    backbone = tiny_vit()
    model = adaptformer.adapt(copy.deepcopy(backbone), "vpt", vpt_tokens=2)
    model.remove_task("default")
    assert model.active_task is None
    model.backbone.reset_classifier(5)  # no task routes the hooks: the ViT computes what it did before
    torch.manual_seed(0)
    assert torch.equal(model.backbone.forward_features(images), backbone.forward_features(images))
    with pytest.raises(AdaptFormerError, match="has no task"):
        model(images)


def test_config_objects_and_method_names_build_the_same_task(images):
    a = adaptformer.adapt(tiny_vit(), config=AdaptFormerConfig(bottleneck=3, layers="top:1"))
    b = adaptformer.adapt(tiny_vit(), "adaptformer", bottleneck=3, layers="top:1")
    assert a.config == b.config and a.config.layers == "top:1"
    assert features(a.eval(), images).shape == features(b.eval(), images).shape
