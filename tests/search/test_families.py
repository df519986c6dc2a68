"""Families of prunable groups: the stage / block / group rule on real architectures, and uniform widths."""

from __future__ import annotations

import random

import pytest
import torch

from search.families import (
    block_of,
    expand,
    families,
    is_uniform,
    natural_key,
    uniform_keep_ratios,
    uniform_widths,
)
from stages.load.models import ModelRequest, load_model
from stages.model.graph import GroupInfo, PruneGraph
from stages.prune.plan import make_plan
from tests.search.optuna_fake_worker import resnet20_groups


@pytest.fixture(scope="module")
def real_groups() -> dict[str, list[GroupInfo]]:
    """Torch-Pruning's groups of three real architectures (random init for torchvision; nothing downloaded)."""
    out = {}
    for spec, shape in (("example:digits-resnet", None), ("torchvision:resnet18", (3, 32, 32)),
                        ("torchvision:mobilenet_v2", (3, 32, 32))):
        lm = load_model(ModelRequest(spec, None, shape))
        out[spec] = PruneGraph(lm.module, torch.zeros((1, *lm.input_shape))).groups()
    return out


def _partition_ok(groups, fams) -> None:
    ids = [gid for gids in fams.values() for gid in gids]
    assert sorted(ids) == sorted(g.id for g in groups) and len(ids) == len(set(ids))


def test_block_of():
    assert block_of("layer2.0.conv1") == "layer2.0"
    assert block_of("features.13.conv.1.0") == "features.13"
    assert block_of("conv1") == "conv1" and block_of("fc") == "fc"
    assert block_of("0.conv") == "0"  # a leading index is its own block


def test_natural_order():
    names = ["features.11-13", "features.7-10", "features.2-3", "layer10", "layer2"]
    assert sorted(names, key=natural_key) == ["features.2-3", "features.7-10", "features.11-13", "layer2", "layer10"]


def test_cifar_resnet_stages_hold_the_stem_in_layer1(real_groups):
    g = real_groups["example:digits-resnet"]
    fams = families(g, "stage")
    assert list(fams) == ["layer1", "layer2", "layer3"]
    assert fams["layer1"] == ["conv1", "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1"]
    assert fams["layer3"] == ["layer3.0.conv1", "layer3.0.shortcut.0", "layer3.1.conv1", "layer3.2.conv1"]
    _partition_ok(g, fams)


def test_torchvision_resnet18_stages(real_groups):
    g = real_groups["torchvision:resnet18"]
    fams = families(g, "stage")
    assert list(fams) == ["layer1", "layer2", "layer3", "layer4"]
    assert "layer4.0.downsample.0" in fams["layer4"] and "conv1" in fams["layer1"]
    _partition_ok(g, fams)
    blocks = families(g, "block")
    assert list(blocks) == ["conv1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                            "layer4.0", "layer4.1"]
    _partition_ok(g, blocks)


def test_mobilenet_v2_stages_and_blocks(real_groups):
    g = real_groups["torchvision:mobilenet_v2"]
    stages = families(g, "stage")
    # the seven inverted-residual stages (blocks sharing a residual stream) and the last 1x1 conv
    assert list(stages) == ["features.0-1", "features.2-3", "features.4-6", "features.7-10", "features.11-13",
                            "features.14-16", "features.17", "features.18"]
    assert stages["features.4-6"] == ["features.4.conv.1.0", "features.5.conv.1.0", "features.6.conv.1.0",
                                      "features.6.conv.2"]
    blocks = families(g, "block")
    assert list(blocks) == [f"features.{i}" for i in range(1, 19)]
    assert blocks["features.13"] == ["features.13.conv.1.0", "features.13.conv.2"]
    for fams in (stages, blocks):
        _partition_ok(g, fams)


@pytest.mark.parametrize("mode", ["stage", "block", "group"])
def test_every_group_in_one_family_and_order_does_not_matter(real_groups, mode):
    for groups in real_groups.values():
        fams = families(groups, mode)
        _partition_ok(groups, fams)
        shuffled = list(groups)
        random.Random(0).shuffle(shuffled)
        assert families(shuffled, mode) == fams
        assert list(families(shuffled, mode).items()) == list(fams.items())


def test_group_mode_is_one_family_per_group():
    g = resnet20_groups()
    fams = families(g, "group")
    assert all(fams[k] == [k] for k in fams) and len(fams) == len(g)


def test_no_residual_degrades_to_blocks():
    g = [GroupInfo(f"features.{i}", 64, (f"features.{i}", f"features.{i + 1}"), (f"features.{i + 3}",))
         for i in (0, 3, 6)]
    # a conv and its BN/ReLU in the same container index space: features.0 and features.1 merge, and so on
    fams = families(g, "stage")
    assert list(fams) == ["features.0-1", "features.3-4", "features.6-7"]
    assert families(g, "block") == {"features.0": ["features.0"], "features.3": ["features.3"],
                                     "features.6": ["features.6"]}


def test_bad_input():
    with pytest.raises(ValueError, match="unknown family mode 'layer'"):
        families(resnet20_groups(), "layer")
    g = resnet20_groups()
    with pytest.raises(ValueError, match="duplicate"):
        families([*g, g[0]], "stage")


def test_uniform_widths_are_identical_within_a_family_and_replay_through_a_plan():
    g = resnet20_groups()
    fams = families(g, "stage")
    ratios = {"layer1": 0.5, "layer2": 0.7, "layer3": 0.33}
    w = uniform_widths(g, fams, ratios, round_to=8)
    assert {w[x] for x in fams["layer1"]} == {16}
    assert {w[x] for x in fams["layer2"]} == {48}  # 64 * 0.7 = 44.8 -> 48
    assert {w[x] for x in fams["layer3"]} == {40}  # 128 * 0.33 = 42.2 -> 40
    scores = {x.id: torch.rand(x.width, generator=torch.Generator().manual_seed(i)) for i, x in enumerate(g)}
    plan = make_plan(g, scores, uniform_keep_ratios(g, fams, ratios, 8), round_to=8)
    assert plan.widths() == w
    assert is_uniform(g, fams, plan.widths())
    # a per-group policy is not uniform
    per_group = expand(fams, ratios) | {"layer2.1.conv1": 0.25}
    assert not is_uniform(g, fams, make_plan(g, scores, per_group, round_to=8).widths())


def test_uniform_widths_keep_one_count_per_width_class():
    g = [GroupInfo("s.0.a", 96, ("s.0.a", "s.1.c"), ()), GroupInfo("s.0.b", 576, ("s.0.b",), ()),
         GroupInfo("s.1.b", 576, ("s.1.b",), ())]
    fams = families(g, "stage")
    assert fams == {"s": ["s.0.a", "s.0.b", "s.1.b"]}
    w = uniform_widths(g, fams, {"s": 0.5}, round_to=8)
    assert w == {"s.0.a": 48, "s.0.b": 288, "s.1.b": 288}
    assert uniform_widths(g, fams, {"s": 1.0}, round_to=8) == {"s.0.a": 96, "s.0.b": 576, "s.1.b": 576}
    assert uniform_widths(g, fams, {"s": 0.01}, round_to=8)["s.0.a"] == 8  # never below one rounding step
