"""Progressive soft masks: the ramp reaches exactly 0 at step K, the hard removal afterwards is
exact, the unpruned model is untouched, and the flow step does what its formula says."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import ConfigError
from stages.load.cifar_resnet import CifarResNet
from stages.model.graph import PruneGraph
from stages.prune.plan import apply_plan, make_plan, uniform_ratios
from stages.recover import DistillSettings
from stages.recover.soft import ChannelMasks, SoftSettings, soft_prune

EX = torch.zeros(2, 1, 16, 16)


def _model() -> nn.Module:
    """A small ResNet with BN statistics and shifts far from the identity (a masked channel's BN
    output would be nonzero without the mask)."""
    torch.manual_seed(0)
    m = CifarResNet(depth=8, width=8, in_channels=1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m.eval()


def _plan(model: nn.Module, ratio: float = 0.5):
    g = PruneGraph(model, EX)
    return make_plan(g.groups(), g.importance("magnitude", p=2), uniform_ratios(g.groups(), ratio), None)


def _data(n: int = 48) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 1, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def test_zeroed_masks_make_the_hard_removal_exact():
    model = _model()
    plan = _plan(model)
    x = torch.randn(8, 1, 16, 16)
    graph = PruneGraph(model, EX)
    masks = ChannelMasks(model, graph, plan)
    with torch.no_grad():
        full = model(x)
        with masks.attached():
            assert torch.equal(model(x), full)  # masks at 1 change nothing
            for gid, m in masks.values.items():
                m[masks.removed[gid]] = 0.0
            masked = model(x)
    hard_model = apply_plan(model, EX, plan)
    with torch.no_grad():
        hard = hard_model(x)
    assert not torch.allclose(masked, full, atol=1e-3)
    assert torch.allclose(hard, masked, rtol=1e-5, atol=1e-5)
    assert all(not mod._forward_hooks for mod in model.modules())


def test_masks_follow_the_ramp_and_are_exactly_zero_at_step_k():
    model = _model()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    plan = _plan(model)
    k = 4
    seen = []
    pruned, _, rec = soft_prune(model, plan, EX, _data(), _data(16), SoftSettings(k), DistillSettings(steps=6, batch_size=8),
                             labeled=True, on_step=lambda s, loss: seen.append(s))
    soft = rec["soft"]
    assert seen == list(range(1, 7))
    assert len(soft["mask_max"]) == k and soft["mask_max"][-1] == 0.0
    assert all(v <= 1 - (i + 1) / k + 1e-6 for i, v in enumerate(soft["mask_max"]))
    assert soft["hard_removal_max_abs"] < 1e-4 and soft["removed_channels"] > 0
    assert rec["steps"] == 6 and rec["plain"]["steps"] == 2
    # the unpruned model (the teacher) is untouched and carries no hooks
    assert all(torch.equal(ref[n], v) for n, v in model.state_dict().items())
    assert all(not mod._forward_hooks for mod in model.modules())
    # the result is the plan's architecture
    widths = {g.id: g.width for g in PruneGraph(pruned, EX).groups()}
    assert widths == {g.id: len(g.keep) for g in plan.groups}
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in apply_plan(model, EX, plan).parameters())


def test_all_steps_soft_leaves_no_plain_steps():
    model = _model()
    _, _, rec = soft_prune(model, _plan(model), EX, _data(), _data(16), SoftSettings(2),
                        DistillSettings(steps=2, batch_size=8), labeled=False)
    assert rec["plain"] == {"steps": 0} and rec["soft"]["mask_max"] == [0.5, 0.0]


def test_flow_step_by_hand():
    """m ← clip(m − η (∂KD/∂m + β S̃), 0, cap) on removed channels; kept channels stay at 1."""
    model = _model()
    plan = _plan(model)
    masks = ChannelMasks(model, PruneGraph(model, EX), plan)
    gid = next(iter(masks.values))
    removed = masks.removed[gid]
    pressure = {g: torch.zeros_like(m) for g, m in masks.values.items()}
    idx = removed.nonzero().flatten()[:3]
    pressure[gid][idx] = torch.tensor([2.0, -2.0, 0.1])
    pressure[gid][~removed] = 5.0  # ignored: kept channels are not moved
    masks.values[gid].grad = torch.zeros_like(masks.values[gid])
    masks.values[gid].grad[idx[2]] = 0.3
    masks.flow_step(eta=0.5, pressure=pressure, cap=0.75)
    m = masks.values[gid].detach()
    assert m[idx].tolist() == [0.0, 0.75, pytest.approx(0.75)]  # 1 - 0.5*2 = 0; 1 + 1 -> cap; 1 - 0.2 -> cap
    masks.flow_step(eta=0.5, pressure=pressure, cap=0.75)
    assert m[idx[2]].item() == pytest.approx(0.75 - 0.5 * 0.1)  # no KD gradient this time: pressure only
    assert (m[~removed] == 1).all() and masks.values[gid].grad is None


def test_soft_steps_beyond_the_total_are_a_config_error():
    model = _model()
    with pytest.raises(ConfigError, match="soft_steps"):
        soft_prune(model, _plan(model), EX, _data(), _data(16), SoftSettings(5), DistillSettings(steps=4),
                   labeled=True)


def test_select_lets_the_flow_choose_the_removed_channels_at_the_plans_widths():
    model = _model()
    plan = _plan(model)
    pruned, chosen, rec = soft_prune(model, plan, EX, _data(), _data(16), SoftSettings(4, eta=5.0, select=True),
                                     DistillSettings(steps=5, batch_size=8), labeled=True)
    soft = rec["soft"]
    assert soft["select"] and isinstance(soft["swapped_channels"], int)
    assert {g.id: len(g.keep) for g in chosen.groups} == {g.id: len(g.keep) for g in plan.groups}
    assert soft["hard_removal_max_abs"] < 1e-4 and soft["mask_max"][-1] == 0.0
    widths = {g.id: g.width for g in PruneGraph(pruned, EX).groups()}
    assert widths == {g.id: len(g.keep) for g in plan.groups}


def test_select_picks_the_units_with_the_lowest_flow_value():
    model = _model()
    plan = _plan(model)
    graph = PruneGraph(model, EX)
    masks = ChannelMasks(model, graph, plan, select=True)
    gid = next(iter(masks.values))
    n = int(masks.removed[gid].sum())
    keep = next(g for g in plan.groups if g.id == gid).keep
    masks.flow[gid][list(keep)[:n]] = 0.0  # the flow pushed the plan's kept channels down instead
    assert torch.equal(masks._lowest_units(gid).nonzero().flatten(), torch.tensor(sorted(keep)[:n]))
    with pytest.raises(ConfigError, match="soft_steps"):
        from stages.recover import RECOVERIES, RecoveryJob

        RECOVERIES.get("distill")(RecoveryJob(model, model, plan, EX, _data(), _data(), DistillSettings(steps=2),
                                              True, options={"select": True}))
