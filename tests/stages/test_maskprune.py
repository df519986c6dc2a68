"""MaskPrune: the multiplier rises until the family's sparsity is met, every group of a family ends at the same
width, the straight-through masks reach the hard mask's zeros, and the removal is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import ConfigError
from stages.model.graph import PruneGraph
from stages.prune.plan import GroupPlan, PruningPlan
from stages.recover import DistillSettings
from stages.recover.maskprune import FamilyMasks, MaskSettings, family_key, maskprune


class Mlp(nn.Module):
    """Two hidden layers of 8 GELU neurons (a transformer FFN's activation): two groups of one family (``w8``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.out(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


EX = torch.zeros(2, 6)


def _data(n: int = 64) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen))


def _plan() -> PruningPlan:  # not uniform: 4 and 2 kept of 8; the family's target is their mean, 3
    return PruningPlan((GroupPlan("fc1", 8, (0, 1, 2, 3)), GroupPlan("fc2", 8, (0, 1))), ("out",))


def test_the_multiplier_rises_until_the_sparsity_is_met_then_stops():
    model = Mlp()
    masks = FamilyMasks(model, PruneGraph(model, EX), _plan(), None, MaskSettings(steps=20))
    assert masks.target == {"w8": 3} and masks.count("w8") == 8 and masks.lam["w8"] == 0.0
    lams, counts = [], []
    for k in range(1, 21):
        masks.step(k)  # no loss gradients: only the constraint moves s and lambda
        lams.append(masks.lam["w8"])
        counts.append(masks.count("w8"))
    bound = masks.bound_at["w8"]
    assert bound is not None and bound <= 20
    assert all(b >= a for a, b in zip(lams[:bound], lams[1:bound]))  # ascends while the family is too wide
    assert lams[bound - 1] > 0 and counts[bound - 1] == 3
    assert all(c == 3 for c in counts[bound - 1:]) and len(set(lams[bound:])) <= 1  # met: it stops there
    assert counts == sorted(counts, reverse=True)  # the width only shrinks


def test_the_straight_through_mask_zeroes_masked_units_and_passes_gradients():
    model = Mlp()
    masks = FamilyMasks(model, PruneGraph(model, EX), _plan(), None, MaskSettings(steps=4))
    masks.bind()  # at the target: 3 of 8 units on
    x = torch.randn(5, 6)
    with masks.attached():
        h = model.fc1(x)
        model(x).sum().backward()
    assert int((h.abs().sum(0) > 0).sum()) <= 3
    # masked units learn too (behind GELU; behind a ReLU their gradient is 0: relu'(0) = 0)
    assert all(m.grad is not None and int((m.grad != 0).sum()) == 8 for m in masks.m.values())
    assert all(not mod._forward_hooks for mod in model.modules())


def test_maskprune_ends_uniform_and_exact():
    model = Mlp()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, plan, rec = maskprune(model, _plan(), EX, _data(), _data(16), None, MaskSettings(steps=10),
                                  DistillSettings(steps=14, batch_size=16), True)
    assert [len(g.keep) for g in plan.groups] == [3, 3]
    assert pruned.fc1.out_features == 3 and pruned.fc2.out_features == 3
    assert rec["phase"]["hard_removal_max_abs"] < 1e-4 and rec["plain"]["steps"] == 4
    assert rec["phase"]["families"]["w8"]["kept"] == 3
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_attention_groups_are_a_family_of_heads():
    from stages.model.graph import GroupInfo

    info = GroupInfo("q", 64, ("q", "k", "v"), ("o",), heads=4, head_dim=16)
    assert family_key(info) == "heads4x16" and family_key(GroupInfo("f", 128, ("f",), ("g",))) == "w128"


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="bind"):
        MaskSettings.from_options(4, {"lr": 0.05, "rho": 1.0, "bind": 0.0})
