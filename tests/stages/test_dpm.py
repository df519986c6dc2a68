"""DPM: the decay schedule's norms at given steps, a self-rectifying release on a constructed example, and
the exact hard removal at step N with the plan's widths kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.errors import ConfigError
from stages.model.graph import PruneGraph
from stages.prune.plan import GroupPlan, PruningPlan
from stages.recover import DistillSettings
from stages.recover.dpm import Decay, DpmSettings, dpm_prune, target_norm
from tests.stages.test_soft_masks import EX, _data, _model, _plan


def test_target_norm_is_linear_to_zero_at_step_n():
    assert target_norm(2.0, 0, 0, 10) == 2.0
    assert target_norm(2.0, 0, 5, 10) == pytest.approx(1.0)
    assert target_norm(2.0, 0, 9, 10) == pytest.approx(0.2)
    assert target_norm(2.0, 0, 10, 10) == 0.0
    assert target_norm(3.0, 4, 7, 10) == pytest.approx(1.5)  # a replacement started at step 4 also ends at N
    assert target_norm(3.0, 4, 12, 10) == 0.0


class Two(nn.Module):
    """conv(1 -> 4) -> ReLU -> conv(4 -> 2): one prunable group of 4 channels, hand-checkable norms."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1)
        self.b = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([3.0, 1.0, 2.0, 4.0]).view(4, 1, 1, 1))
            self.a.bias.copy_(torch.tensor([4.0, 0.0, 0.0, 3.0]))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _two_plan(keep: tuple[int, ...]) -> PruningPlan:
    return PruningPlan((GroupPlan("a", 4, keep),), ("b",))


def test_channel_norms_and_decay_follow_the_schedule():
    model = Two()
    ex = torch.zeros(2, 1, 3, 3)
    decay = Decay(model, PruneGraph(model, ex, ("b",)).out_slices(), _two_plan((2, 3)), None)
    assert decay.norms("a").tolist() == pytest.approx([5.0, 1.0, 2.0, 5.0])  # ||(w, b)||: 3-4-5
    assert set(decay.start["a"]) == {0, 1}
    decay.decay(step=1, n=4)  # 3/4 of the start norm
    assert decay.norms("a").tolist() == pytest.approx([3.75, 0.75, 2.0, 5.0])
    decay.decay(step=4, n=4)
    assert decay.norms("a").tolist() == pytest.approx([0.0, 0.0, 2.0, 5.0])
    assert torch.equal(model.a.weight[:2], torch.zeros(2, 1, 1, 1)) and torch.equal(model.a.bias[:2], torch.zeros(2))


def test_a_resisting_channel_is_released_and_the_next_ranked_starts_decaying():
    model = Two()
    ex = torch.zeros(2, 1, 3, 3)
    scores = {"a": torch.tensor([0.0, 0.1, 0.5, 0.9])}  # channel 2 is the next-ranked kept channel
    decay = Decay(model, PruneGraph(model, ex, ("b",)).out_slices(), _two_plan((2, 3)), scores)
    s = DpmSettings(steps=10, t_rate=0.05, t_len=1.5, patience=1, max_swaps=1.0)
    decay.decay(step=1, n=10)  # channel 0 at 4.5, channel 1 at 0.9
    for p in model.parameters():  # channel 0 has a gradient far above its group's mean, the others small
        p.grad = torch.zeros_like(p)
    model.a.weight.grad[0] = -10.0
    model.a.weight.grad[1:] = -0.1
    before = decay.snapshot()
    with torch.no_grad():  # "the optimiser step" regrows channel 0 by 20%, channel 1 by 1%
        model.a.weight[0] *= 1.2
        model.a.bias[0] *= 1.2
        model.a.weight[1] *= 1.01
    decay.rectify(before, step=2, s=s)
    assert [(w["released"], w["replaced_by"]) for w in decay.swaps] == [(0, 2)]
    assert decay.norms("a")[0] == pytest.approx(5.0)  # its norm restored to L_0
    assert set(decay.start["a"]) == {1, 2} and decay.start["a"][2] == (pytest.approx(2.0), 2)
    assert decay.plan(_two_plan((2, 3))).groups[0].keep == (0, 3)
    decay.decay(step=10, n=10)
    assert decay.norms("a").tolist() == pytest.approx([5.0, 0.0, 0.0, 5.0])


def test_no_release_below_the_thresholds():
    model = Two()
    decay = Decay(model, PruneGraph(model, torch.zeros(2, 1, 3, 3), ("b",)).out_slices(), _two_plan((2, 3)), None)
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # every channel's gradient is the group's mean: C_len = 1 < 1.5
    before = decay.snapshot()
    with torch.no_grad():
        model.a.weight[0] *= 1.5
    decay.rectify(before, step=1, s=DpmSettings(steps=10, patience=1))
    assert decay.swaps == []


def test_dpm_removal_is_exact_keeps_the_widths_and_leaves_the_model_alone():
    model = _model()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    plan = _plan(model)
    pruned, new_plan, rec = dpm_prune(model, plan, EX, _data(), _data(16), None, DpmSettings(4),
                                      DistillSettings(steps=6, batch_size=8), True)
    assert rec["phase"]["hard_removal_max_abs"] < 1e-4 and rec["plain"]["steps"] == 2
    assert [len(g.keep) for g in new_plan.groups] == [len(g.keep) for g in plan.groups]
    assert rec["phase"]["target_norm_max"][-1] == 0.0 and len(rec["curve"]["loss"]) == 6
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert pruned(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_bad_options_and_phase_lengths_are_refused():
    with pytest.raises(ConfigError, match="patience"):
        DpmSettings.from_options(4, {"rectify": True, "t_rate": 0.0, "t_len": 1.5, "patience": 0,
                                     "rectify_until": 0.5, "max_swaps": 0.1})
    model = _model()
    with pytest.raises(ConfigError, match="soft_steps"):
        dpm_prune(model, _plan(model), EX, _data(), _data(16), None, DpmSettings(9), DistillSettings(steps=6), True)


def test_attention_heads_decay_and_swap_whole():
    transformers = pytest.importorskip("transformers")
    from torch.utils.data import TensorDataset

    from stages.model.contract import ContractModel, InputSpec, ModelIO, OutputSpec
    from stages.prune.plan import make_plan, uniform_ratios

    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64)
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    io = ModelIO(tuple(InputSpec(n, "int64", ("sequence",)) for n in ("input_ids", "attention_mask")),
                 OutputSpec("last_hidden_state", "hidden"), {"sequence": 8})
    model = ContractModel(bert, io).eval()
    ids = torch.randint(0, 100, (32, 8), generator=torch.Generator().manual_seed(0))
    x = io.pack({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    data = TensorDataset(x, torch.zeros(32))
    graph = PruneGraph(model, x[:2])
    plan = make_plan(graph.groups(), graph.importance("magnitude", p=2), uniform_ratios(graph.groups(), 0.5), None)
    # thresholds that release every resisting unit at once: swaps must still be whole heads
    s = DpmSettings(4, t_rate=-1.0, t_len=0.0, patience=1, rectify_until=1.0, max_swaps=1.0)
    pruned, new_plan, rec = dpm_prune(model, plan, x[:2], data, data, None, s,
                                      DistillSettings(steps=5, batch_size=8, loss="feature"), False)
    heads = {g.id: g for g in graph.groups() if g.heads}
    assert heads and rec["phase"]["swapped"] > 0
    before = {g.id: len(g.keep) for g in plan.groups}
    for gp in new_plan.groups:
        if gp.id in heads:
            info = heads[gp.id]
            kept = {info.head_of(c) for c in gp.keep}
            assert len(gp.keep) == len(kept) * info.head_dim == before[gp.id]  # whole heads, the plan's width
    assert rec["phase"]["hard_removal_max_abs"] < 1e-4
    assert pruned.model.encoder.layer[0].attention.self.num_attention_heads == 2
