"""Grouped (not depthwise) convolutions: a cut removes the same positions from every conv group, so Torch-Pruning
keeps a runnable graph; RegNet and ResNeXt prune, export and match on ONNX Runtime; an uneven plan is one line;
DPM and MaskPrune move whole positions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import StageError
from stages.model.graph import PruneGraph
from stages.prune.plan import GroupPlan, PruningPlan, apply_plan, make_plan, uniform_ratios
from stages.recover import DistillSettings
from stages.recover.dpm import DpmSettings, dpm_prune
from stages.recover.maskprune import MaskSettings, family_key, maskprune


class Block(nn.Module):
    """1x1 -> grouped 3x3 (4 groups of 4) -> 1x1, ResNeXt-style, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.g = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.b(self.g(self.a(x))).mean((2, 3)))


EX = torch.zeros(2, 3, 8, 8)


def test_grouped_groups_carry_their_conv_groups_and_cut_the_same_positions_everywhere():
    model = Block().eval()
    graph = PruneGraph(model, EX)
    grouped = {g.id: g for g in graph.groups() if g.channel_groups}
    assert set(grouped) == {"a.0", "g.0"} and all(g.channel_groups == 4 and g.units == 4 for g in grouped.values())
    assert family_key(grouped["a.0"]) == "w16g4"
    plan = make_plan(graph.groups(), graph.importance("magnitude", p=2), uniform_ratios(graph.groups(), 0.5), 8)
    for gp in plan.groups:
        if gp.id in grouped:
            pos = {c % 4 for c in gp.keep}
            assert len(pos) == 2 and sorted(gp.keep) == sorted(p + 4 * k for p in pos for k in range(4))
    pruned = apply_plan(model, EX, plan)
    conv = pruned.g[0]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 8, 8)
    with torch.no_grad():
        assert torch.isfinite(pruned(torch.randn(3, 3, 8, 8))).all()


def test_an_uneven_cut_of_a_grouped_conv_is_one_line():
    model = Block().eval()
    plan = PruningPlan((GroupPlan("a.0", 16, tuple(range(8))),))  # keeps conv groups 0 and 1 only
    with pytest.raises(StageError, match="grouped convolution unevenly"):
        apply_plan(model, EX, plan)


@pytest.mark.parametrize("arch", ["regnet_x_400mf", "resnext50_32x4d"])
def test_torchvision_grouped_models_prune_and_export_on_parity(arch, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from stages.export import ExportSettings, check_parity, export_onnx
    from targets.ort.runner import OrtRunner

    model = getattr(torchvision.models, arch)().eval()
    ex = torch.zeros(2, 3, 32, 32)
    graph = PruneGraph(model, ex)
    assert any(g.channel_groups > 1 for g in graph.groups())
    plan = make_plan(graph.groups(), graph.importance("magnitude", p=2), uniform_ratios(graph.groups(), 0.4), 8)
    pruned = apply_plan(model, ex, plan)
    path = tmp_path / "m.onnx"
    export_onnx(pruned, (3, 32, 32), path, ExportSettings())
    with OrtRunner(path) as r:
        parity = check_parity(pruned, r, torch.randn(2, 3, 32, 32), 1e-3, 1e-3)
    assert max(v["max_abs"] for v in parity.values()) < 1e-3


def _data(n: int = 32) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 5, (n,), generator=gen))


def test_dpm_and_maskprune_move_whole_positions():
    model = Block().eval()
    graph = PruneGraph(model, EX)
    plan = make_plan(graph.groups(), graph.importance("magnitude", p=2), uniform_ratios(graph.groups(), 0.5), None)
    forced = DpmSettings(4, t_rate=-1.0, t_len=0.0, patience=1, rectify_until=1.0, max_swaps=1.0)
    _, dplan, rec = dpm_prune(model, plan, EX, _data(), _data(16), None, forced, DistillSettings(steps=5, batch_size=8),
                              True)
    _, mplan, _ = maskprune(model, plan, EX, _data(), _data(16), None, MaskSettings(steps=4),
                            DistillSettings(steps=5, batch_size=8), True)
    assert rec["phase"]["swapped"] > 0
    for new in (dplan, mplan):
        for gp in new.groups:
            if gp.id in ("a.0", "g.0"):
                pos = {c % 4 for c in gp.keep}
                assert len(gp.keep) == 8 and sorted(gp.keep) == sorted(p + 4 * k for p in pos for k in range(4))


def test_a_channel_shuffle_is_refused_in_one_line():
    torchvision = pytest.importorskip("torchvision")
    with pytest.raises(StageError, match="channel shuffle"):
        PruneGraph(torchvision.models.shufflenet_v2_x0_5().eval(), torch.zeros(1, 3, 32, 32))


def test_a_grouping_that_does_not_end_is_one_line(monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    import stages.model.graph as graph_mod

    monkeypatch.setattr(graph_mod, "GROUPING_DEADLINE_S", 0.001)  # MaxViT's never ends; resnet18's takes ~50 ms
    graph = PruneGraph(torchvision.models.resnet18().eval(), torch.zeros(1, 3, 32, 32))
    with pytest.raises(StageError, match="did not finish grouping"):
        graph.groups()
    monkeypatch.setattr(graph_mod, "GROUPING_DEADLINE_S", 120)
    assert graph.groups()  # the alarm is cleared: a later call works
