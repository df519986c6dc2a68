"""Prune stage: policy -> plan -> pruned model, through Torch-Pruning's dependency graph."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from core.errors import StageError
from stages.load.cifar_resnet import CifarResNet
from stages.model.cost import macs_params
from stages.model.graph import PruneGraph, find_classifier
from stages.prune.plan import (
    PruningPlan,
    apply_plan,
    keep_count,
    make_plan,
    recalibrate_bn,
    uniform_ratios,
)


@pytest.mark.parametrize("width,ratio,round_to,expected", [
    (64, 0.5, 8, 32), (64, 0.55, 8, 32), (64, 0.57, 8, 40), (32, 0.1, 8, 8), (6, 0.5, 8, 6), (64, 0.5, None, 32),
    (10, 0.04, None, 1), (64, 1.0, 8, 64),
])
def test_keep_count_rounds_to_multiples(width, ratio, round_to, expected):
    assert keep_count(width, ratio, round_to) == expected


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return CifarResNet(depth=8, width=16, in_channels=1, num_classes=10).eval()


def test_groups_couple_residual_channels_and_skip_classifier():
    m = resnet()
    x = torch.zeros(2, 1, 32, 32)
    assert find_classifier(m, x) == "fc"
    groups = PruneGraph(m, x).groups()
    ids = [g.id for g in groups]
    assert "fc" not in ids
    # the stage-1 residual stream couples conv1, layer1.0.conv2 (and their BNs) into one group
    stem = next(g for g in groups if "conv1" == g.id)
    assert "layer1.0.conv2" in stem.out_layers and "bn1" in stem.out_layers


def test_plan_keeps_top_scores_deterministically():
    m = resnet()
    x = torch.zeros(2, 1, 32, 32)
    g = PruneGraph(m, x)
    groups = g.groups()
    scores = {gr.id: torch.arange(gr.width, dtype=torch.float) for gr in groups}  # higher index = more important
    plan = make_plan(groups, scores, uniform_ratios(groups, 0.5), round_to=8)
    for gp, gr in zip(plan.groups, groups):
        assert gp.keep == tuple(range(gr.width - len(gp.keep), gr.width))
    assert plan == make_plan(groups, scores, uniform_ratios(groups, 0.5), round_to=8)


def test_apply_plan_prunes_a_copy_and_checks_forward():
    m = resnet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 1, 32, 32)
    g = PruneGraph(m, x)
    groups = g.groups()
    plan = make_plan(groups, g.importance("magnitude", p=2), uniform_ratios(groups, 0.5), 8)
    pruned = apply_plan(m, x, plan)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # input model untouched
    assert pruned.layer1[0].conv1.out_channels == 8 and pruned.fc.in_features == 32
    macs0, p0 = macs_params(m, (1, 32, 32))
    macs1, p1 = macs_params(pruned, (1, 32, 32))
    assert macs1 < macs0 / 3 and p1 < p0 / 3
    assert pruned(x).shape == (2, 10)


def test_plan_json_replay_gives_same_architecture_and_weights():
    m = resnet()
    x = torch.randn(2, 1, 32, 32)
    g = PruneGraph(m, x)
    groups = g.groups()
    plan = make_plan(groups, g.importance("magnitude", p=1), uniform_ratios(groups, 0.4), 8)
    a = apply_plan(m, x, plan)
    replay = PruningPlan.from_json(json.loads(json.dumps(plan.to_json())))
    b = apply_plan(resnet(), x, replay)
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]
    assert torch.allclose(a(x), b(x))


def test_plan_for_other_architecture_is_rejected():
    m = resnet()
    x = torch.zeros(2, 1, 32, 32)
    g = PruneGraph(m, x)
    plan = make_plan(g.groups(), g.importance("magnitude", p=2), uniform_ratios(g.groups(), 0.5), 8)
    other = CifarResNet(depth=8, width=32, in_channels=1).eval()
    with pytest.raises(StageError, match="different architecture"):
        apply_plan(other, x, plan)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_prune_and_run(name):
    import torchvision

    m = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    g = PruneGraph(m, x)
    groups = g.groups()
    plan = make_plan(groups, g.importance("magnitude", p=2), uniform_ratios(groups, 0.5), 8)
    pruned = apply_plan(m, x, plan)
    assert pruned(x).shape == (1, 1000)
    assert macs_params(pruned, (3, 64, 64))[0] < 0.5 * macs_params(m, (3, 64, 64))[0]


def test_bn_recalibration_reestimates_statistics():
    from torch.utils.data import TensorDataset

    m = resnet()
    data = TensorDataset(torch.randn(128, 1, 32, 32) * 3 + 1, torch.zeros(128, dtype=torch.long))
    assert recalibrate_bn(m, data, batches=2) > 0
    assert not m.training
    # the stem BN now tracks the stem conv's output on this data
    with torch.no_grad():
        out = m.conv1(data.tensors[0])
    assert torch.allclose(m.bn1.running_mean, out.mean((0, 2, 3)), atol=1e-3)
