"""SBPF: sensitiveness by hand, the damage is the weight damage it claims, nothing is modified,
and the allocation turns into keep ratios that meet the global ratio.

The hand model (``ThreeLinear``), all weights identity, ReLU after fc1 and fc2, biases
fc1 = (0, 0), fc2 = (1, 0), fc3 (classifier) = (0, 0.5); for x >= 0 the logits are
``(x0 + 1, x1 + 0.5)``. Samples (1,0), (2,0), (0.5,0) of class 0 and (0,3) of class 1: all right.

    damage fc1 (zero_fraction 1: both channels zeroed) -> h2 = relu(0 + (1,0)) -> logits (1, 0.5):
        always class 0 -> 75 %,  s_fc1 = 25
    damage fc2 (both channels and the bias zeroed)     -> logits (0, 0.5): always class 1 -> 25 %,
        s_fc2 = 75
    allocation: 1/s = (1/25, 1/75), mean 2/75 -> w = (1.5, 0.5): the less sensitive fc1 loses more.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import ConfigError
from stages.load.cifar_resnet import CifarResNet
from stages.model.graph import PruneGraph
from stages.score import CRITERIA, ScoreContext
from stages.score.sbpf import allocated_keep_ratios


class ThreeLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
        with torch.no_grad():
            for fc, b in ((self.fc1, (0.0, 0.0)), (self.fc2, (1.0, 0.0)), (self.fc3, (0.0, 0.5))):
                fc.weight.copy_(torch.eye(2))
                fc.bias.copy_(torch.tensor(b))

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


X = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [0.0, 3.0]])
Y = torch.tensor([0, 0, 0, 1])


def ctx_for(model, x, y, seed=0, **options):
    model.eval()
    return ScoreContext(model=model, graph=PruneGraph(model, x[:2]), calib=TensorDataset(x, y), batches=1,
                        batch_size=len(x), seed=seed, options=options)


def test_sensitiveness_and_allocation_by_hand():
    res = CRITERIA.get("sbpf").result(ctx_for(ThreeLinear(), X, Y, damage="zero", zero_fraction=1.0, draws=2))
    assert res.meta["metric_base"] == 100.0
    assert res.meta["sensitiveness"] == {"fc1": 25.0, "fc2": 75.0}
    assert res.allocation == pytest.approx({"fc1": 1.5, "fc2": 0.5})
    assert set(res.scores) == {"fc1", "fc2"} and res.scores["fc1"].shape == (2,)
    # unlabelled samples are scored against the model's own predictions (here the same)
    unl = CRITERIA.get("sbpf").result(ctx_for(ThreeLinear(), X, torch.full((4,), -1), damage="zero",
                                              zero_fraction=1.0))
    assert unl.meta["sensitiveness"] == res.meta["sensitiveness"]


def test_outputs_that_are_not_class_logits_are_compared_by_cosine():
    """Embedding-style references (the unpruned outputs, float): sensitiveness = 100 x (1 - mean cosine)."""
    with torch.no_grad():
        clean = ThreeLinear()(X)
    res = CRITERIA.get("sbpf").result(ctx_for(ThreeLinear(), X, clean, damage="zero", zero_fraction=1.0, draws=2))
    assert res.meta["metric_base"] == pytest.approx(100.0)
    for layer, damaged in (("fc1", torch.tensor([1.0, 0.5])), ("fc2", torch.tensor([0.0, 0.5]))):
        cos = torch.nn.functional.cosine_similarity(damaged.expand(4, 2), clean, dim=1).double()
        assert res.meta["sensitiveness"][layer] == pytest.approx(100 * (1 - float(cos.mean())), abs=1e-3)


def test_floor_bounds_the_weights():
    m = ThreeLinear()
    with torch.no_grad():
        m.fc2.weight.zero_()  # fc2 ignores fc1: damaging fc1 changes nothing, s_fc1 = 0 -> floor
    res = CRITERIA.get("sbpf").result(ctx_for(m, X, Y, damage="zero", zero_fraction=1.0, floor=0.5))
    # logits are always (1, 0.5): 75 %; damaging fc2 gives (0, 0.5): 25 %
    assert res.meta["sensitiveness"] == {"fc1": 0.0, "fc2": 50.0}
    assert res.meta["floored"] == ["fc1"]
    s = {"fc1": 0.5, "fc2": res.meta["sensitiveness"]["fc2"]}
    inv = {k: 1 / v for k, v in s.items()}
    mean = sum(inv.values()) / 2
    assert res.allocation == pytest.approx({k: v / mean for k, v in inv.items()})


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_noise_damage_is_weight_damage_and_seeded():
    torch.manual_seed(0)
    m = ConvNet().eval()
    x = torch.randn(32, 1, 6, 6)
    y = torch.full((32,), -1)
    res = CRITERIA.get("sbpf").result(ctx_for(m, x, y, seed=7, noise_scale=2.0, draws=2))
    # the same draws, by hand: W + N(0, (2 std W)^2), generator seeded 7, one draw after the other
    gen = torch.Generator().manual_seed(7)
    w = m.conv.weight.detach()
    with torch.no_grad():
        pred = m(x).argmax(1)
        by_hand = []
        for _ in range(2):
            d = copy.deepcopy(m)
            d.conv.weight.add_(torch.randn(w.shape, generator=gen) * (2.0 * float(w.double().std())))
            by_hand.append(round(100.0 * float((d(x).argmax(1) == pred).double().mean()), 4))
    assert res.meta["damaged_metric"]["conv"] == by_hand
    assert by_hand[0] < 100.0  # the damage does something
    again = CRITERIA.get("sbpf").result(ctx_for(m, x, y, seed=7, noise_scale=2.0, draws=2))
    assert again.meta["damaged_metric"] == res.meta["damaged_metric"]


@pytest.mark.parametrize("damage", ["noise", "zero"])
def test_weights_are_restored_exactly(damage):
    m = CifarResNet(depth=8, width=8, in_channels=1).train()
    m.layer2.eval()
    before = copy.deepcopy(m.state_dict())
    ctx = ctx_for(m, torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)), damage=damage)
    m.train()
    m.layer2.eval()
    res = CRITERIA.get("sbpf").result(ctx)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not mod._forward_hooks for mod in m.modules())
    assert m.training and not m.layer2.training
    assert set(res.allocation) == {g.id for g in ctx.graph.groups()}


def test_allocated_keep_ratios_uniform_gives_the_uniform_ratio():
    keep = allocated_keep_ratios({"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 8, "b": 16, "c": 32}, 0.4, 0.9)
    assert keep == pytest.approx({"a": 0.6, "b": 0.6, "c": 0.6})


def test_allocated_keep_ratios_meets_the_target_and_the_clip():
    widths = {"a": 10, "b": 10, "c": 20}
    keep = allocated_keep_ratios({"a": 10.0, "b": 1.0, "c": 1.0}, widths, 0.5, 0.8)
    prune = {g: 1 - k for g, k in keep.items()}
    assert prune["a"] == pytest.approx(0.8)  # clipped
    assert prune["b"] == pytest.approx(prune["c"])  # the rest shares the remainder in proportion
    assert sum(widths[g] * prune[g] for g in widths) / 40 == pytest.approx(0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        w = {k: float(v) for k, v in zip("abcdef", torch.rand(6, generator=g) * 3)}
        wd = {k: int(v) for k, v in zip("abcdef", torch.randint(4, 64, (6,), generator=g))}
        keep = allocated_keep_ratios(w, wd, 0.6, 0.85)
        prune = {k: 1 - v for k, v in keep.items()}
        assert all(-1e-12 <= r <= 0.85 + 1e-12 for r in prune.values())
        assert sum(wd[k] * prune[k] for k in wd) / sum(wd.values()) == pytest.approx(0.6)


def test_allocated_keep_ratios_infeasible_and_bad_args():
    keep = allocated_keep_ratios({"a": 1.0, "b": 3.0}, {"a": 4, "b": 4}, 0.7, 0.5)
    assert keep == pytest.approx({"a": 0.5, "b": 0.5})  # the clip wins
    keep = allocated_keep_ratios({"a": 0.0, "b": 1.0}, {"a": 4, "b": 4}, 0.5, 0.6)
    assert keep == pytest.approx({"a": 1.0, "b": 0.4})  # weight 0 never pruned: the target cannot be met
    with pytest.raises(ConfigError):
        allocated_keep_ratios({"a": 1.0}, {"a": 4}, 1.0, 0.9)
    with pytest.raises(ConfigError):
        allocated_keep_ratios({"a": 1.0}, {"a": 4}, 0.5, 1.5)


def test_bad_options_are_config_errors():
    for opt in ({"damage": "fire"}, {"within": "l3"}, {"draws": 0}, {"noise_scale": 0.0}, {"floor": 0.0}):
        with pytest.raises(ConfigError):
            CRITERIA.get("sbpf").result(ctx_for(ThreeLinear(), X, Y, **opt))
