"""Wanda and STADE: statistics, scores and bias compensation, checked against hand computations.

The hand example (``TwoLinear``): calibration inputs x in {(1,1), (3,1), (1,3), (3,3)}, and
``fc1`` with weight [[1,0],[0,1],[1,1]], bias [0,0,10] gives (ReLU is the identity here) the
hidden features fed to ``fc2``:

    h0: 1, 3, 1, 3      mean 2   unbiased var 4/3   ||h0||^2 = 20
    h1: 1, 1, 3, 3      mean 2   unbiased var 4/3   ||h1||^2 = 20
    h2: 12, 14, 14, 16  mean 14  unbiased var 8/3   ||h2||^2 = 792

``fc2`` weight [[1, -2, 0.5], [0, 1, -1]], bias [0, 0]:

    Wanda |W|*||h||:  [[sqrt20, 2 sqrt20, 0.5 sqrt792], [0, sqrt20, sqrt792]]
    STADE W^2*var:    [[4/3, 16/3, 2/3], [0, 4/3, 8/3]]

Channel (structured) scores of fc1's group = column sums over fc2:
    Wanda [sqrt20, 3 sqrt20, 1.5 sqrt792]  (order 0 < 1 < 2)
    STADE [4/3, 20/3, 10/3]                (order 0 < 2 < 1: h2's large mean does not count)
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.model.bias import (
    add_output_shift,
    bn_successors,
    compensate_removed_inputs,
    ensure_bias_params,
    masked_shift,
)
from stages.model.calib import (
    InputStats,
    collect_input_stats,
    conv_batch_stats,
    linear_batch_stats,
)
from stages.model.graph import PruneGraph
from stages.model.masks import apply_masks
from stages.prune.compensate import apply_plan_compensated
from stages.prune.plan import GroupPlan, PruningPlan, apply_plan, make_plan, uniform_ratios
from stages.score import CRITERIA, ScoreContext
from stages.score.stade import stade_masks, stadew_masks
from stages.score.stade import weight_scores as stade_w
from stages.score.wanda import wanda_masks
from stages.score.wanda import weight_scores as wanda_w

X = torch.tensor([[1.0, 1.0], [3.0, 1.0], [1.0, 3.0], [3.0, 3.0]])
W2 = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]])


class TwoLinear(nn.Module):
    def __init__(self, names: tuple[str, str] = ("fc1", "fc2")) -> None:
        super().__init__()
        self.names = names
        fc1, fc2 = nn.Linear(2, 3), nn.Linear(3, 2)
        with torch.no_grad():
            fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            fc1.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
            fc2.weight.copy_(W2)
            fc2.bias.zero_()
        self.add_module(names[0], fc1)
        self.add_module(names[1], fc2)

    def forward(self, x):
        return getattr(self, self.names[1])(torch.relu(getattr(self, self.names[0])(x)))


def ctx_for(model: nn.Module, x: torch.Tensor) -> ScoreContext:
    model.eval()
    data = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    return ScoreContext(model=model, graph=PruneGraph(model, x[:2]), calib=data, batches=1, batch_size=len(x))


def hidden_stats() -> InputStats:
    return collect_input_stats(TwoLinear(), [X], ["fc2"])["fc2"]


# ------------------------------------------------------------------ statistics

def test_linear_input_stats_by_hand():
    st = hidden_stats()
    assert st.count == 4
    assert torch.allclose(st.mean, torch.tensor([2.0, 2.0, 14.0], dtype=torch.float64))
    assert torch.allclose(st.var, torch.tensor([4 / 3, 4 / 3, 8 / 3], dtype=torch.float64))  # unbiased, n-1
    assert torch.allclose(st.sqsum, torch.tensor([20.0, 20.0, 792.0], dtype=torch.float64))


def test_stats_do_not_depend_on_batching_and_flatten_tokens():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 7) * 3 + 2  # (batch, tokens, features): 30 tokens
    whole = linear_batch_stats(x)
    parts = linear_batch_stats(x[:1]).merge(linear_batch_stats(x[1:4])).merge(linear_batch_stats(x[4:]))
    flat = x.reshape(-1, 7).double()
    assert whole.count == parts.count == 30
    assert torch.allclose(parts.mean, flat.mean(0)) and torch.allclose(parts.var, flat.var(0, unbiased=True))
    assert torch.allclose(parts.sqsum, flat.square().sum(0))
    assert torch.allclose(whole.var, parts.var)


def test_welford_merge_is_stable_at_large_offsets():
    # values 1e6 + {0..3}: E[x^2] - E[x]^2 in float32 loses every digit of the variance
    base = torch.tensor([0.0, 1.0, 2.0, 3.0]).repeat(250) + 1e6
    st = InputStats(0, torch.zeros(1), torch.zeros(1), torch.zeros(1))
    for chunk in base.split(37):
        st = st.merge(linear_batch_stats(chunk.view(-1, 1)))
    exact = torch.tensor([0.0, 1.0, 2.0, 3.0]).repeat(250).double().var()
    assert st.count == 1000 and abs(float(st.var[0]) - float(exact)) < 1e-9
    naive32 = (base.square().sum() - 1000 * base.mean().square()) / 999
    assert abs(float(naive32) - float(exact)) > 0.1  # the float32 textbook formula is wrong here


def test_conv_tap_stats_by_hand():
    # one 2x2 image [[1,2],[3,4]], 3x3 conv, padding 1: 4 output positions per tap
    conv = nn.Conv2d(1, 1, 3, padding=1)
    st = conv_batch_stats(torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2), conv)
    assert st.count == 4 and st.mean.shape == (1, 3, 3)
    # centre tap sees all four pixels
    assert st.mean[0, 1, 1] == 2.5 and math.isclose(float(st.var[0, 1, 1]), 5 / 3)
    # top-left tap sees x[0,0] at output (1,1) only, padding zeros elsewhere: {0,0,0,1}
    assert st.mean[0, 0, 0] == 0.25 and st.sqsum[0, 0, 0] == 1.0
    # top-centre tap: {0, 0, 1, 2}
    assert st.mean[0, 0, 1] == 0.75 and st.sqsum[0, 0, 1] == 5.0
    assert math.isclose(float(st.var[0, 0, 1]), 2.75 / 3)
    # bottom-right tap: {4, 0, 0, 0}
    assert st.mean[0, 2, 2] == 1.0 and st.sqsum[0, 2, 2] == 16.0


def test_conv_tap_stats_match_explicit_unfold_with_stride_groups_and_reflect():
    torch.manual_seed(1)
    for conv in (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
                 nn.Conv2d(3, 2, (3, 5), padding=(2, 1), dilation=(2, 1)),
                 nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect")):
        xs = [torch.randn(3, conv.in_channels, 9, 8) + 2 for _ in range(2)]
        st = conv_batch_stats(xs[0], conv).merge(conv_batch_stats(xs[1], conv))
        xp = torch.nn.functional.pad(torch.cat(xs).double(), conv._reversed_padding_repeated_twice,
                                     mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
        u = torch.nn.functional.unfold(xp, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
        u = u.permute(1, 0, 2).reshape(u.shape[1], -1)
        assert st.count == u.shape[1]
        assert torch.allclose(st.mean.flatten(), u.mean(1)) and torch.allclose(st.var.flatten(), u.var(1))
        assert torch.allclose(st.sqsum.flatten(), u.square().sum(1))


# ------------------------------------------------------------------ scores by hand

S20, S792 = math.sqrt(20), math.sqrt(792)


def test_wanda_weight_scores_by_hand():
    m = TwoLinear()
    s = wanda_w("fc2", m.fc2, hidden_stats())
    expected = torch.tensor([[S20, 2 * S20, 0.5 * S792], [0.0, S20, S792]], dtype=torch.float64)
    assert torch.allclose(s, expected)


def test_stade_weight_scores_by_hand():
    m = TwoLinear()
    s = stade_w("fc2", m.fc2, hidden_stats())
    expected = torch.tensor([[4 / 3, 16 / 3, 2 / 3], [0.0, 4 / 3, 8 / 3]], dtype=torch.float64)
    assert torch.allclose(s, expected)


def test_wanda_and_stade_channel_scores_by_hand():
    m = TwoLinear()
    w = CRITERIA.get("wanda")(ctx_for(m, X))
    s = CRITERIA.get("stade")(ctx_for(m, X))
    assert set(w) == set(s) == {"fc1"}  # fc2 is the head: only fc1's channels are prunable
    assert torch.allclose(w["fc1"], torch.tensor([S20, 3 * S20, 1.5 * S792]))
    assert torch.allclose(s["fc1"], torch.tensor([4 / 3, 20 / 3, 10 / 3]))
    # the mean-heavy channel 2 is Wanda's most important and STADE's middle one
    assert w["fc1"].argsort().tolist() == [0, 1, 2] and s["fc1"].argsort().tolist() == [0, 2, 1]
    # power=2: ||X_j||^2 * ||W_:j||^2 = [20*1, 20*5, 792*1.25]
    w2 = CRITERIA.get("wanda").fn(ctx_for(TwoLinear(), X), power=2.0)
    assert torch.allclose(w2["fc1"], torch.tensor([20.0, 100.0, 990.0]))


def test_stadew_uses_stade_on_output_projections_only():
    # "fc2" is OPT's down projection: stadew == stade on it; renamed layers get Wanda
    s = CRITERIA.get("stadew")(ctx_for(TwoLinear(), X))
    assert torch.allclose(s["fc1"], torch.tensor([4 / 3, 20 / 3, 10 / 3]))
    s2 = CRITERIA.get("stadew")(ctx_for(TwoLinear(("lin1", "lin2")), X))
    assert torch.allclose(s2["lin1"], torch.tensor([S20, 3 * S20, 1.5 * S792]))
    st = {"fc2": hidden_stats()}
    assert stadew_masks(TwoLinear(), st, "0.34").compensate == {"fc2"}
    st2 = {"lin2": hidden_stats()}
    assert stadew_masks(TwoLinear(("lin1", "lin2")), st2, "0.34").compensate == frozenset()


def test_compensation_layers_per_criterion():
    from stages.score import compensation_layers

    assert compensation_layers("stade", TwoLinear()) == ["fc1", "fc2"]
    assert compensation_layers("stadew", TwoLinear()) == ["fc2"]  # OPT's fc2
    assert compensation_layers("stadew", TwoLinear(("up_proj", "down_proj"))) == ["down_proj"]
    assert compensation_layers("wanda", TwoLinear()) == [] == compensation_layers("magnitude-l2", TwoLinear())


def test_row_masks_and_compensation_by_hand():
    m, st = TwoLinear(), {"fc2": hidden_stats()}
    # one weight per row (int(3 * 0.34) = 1): Wanda prunes column 0 in both rows
    assert wanda_masks(m, st, "0.34").pruned["fc2"].tolist() == [[True, False, False], [True, False, False]]
    # STADE: row 0 prunes w02 (2/3 is its lowest), row 1 prunes w10 (0)
    masks = stade_masks(m, st, "0.34")
    assert masks.pruned["fc2"].tolist() == [[False, False, True], [True, False, False]]
    out = apply_masks(m, masks, st)
    # b0 += w02 * mu2 = 0.5 * 14 = 7; b1 += w10 * mu0 = 0
    assert out.fc2.bias.tolist() == [7.0, 0.0]
    assert out.fc2.weight.tolist() == [[1.0, -2.0, 0.0], [0.0, 1.0, -1.0]]
    assert m.fc2.weight[0, 2] == 0.5 and m.fc2.bias.tolist() == [0.0, 0.0]  # input model untouched
    # mean output over the calibration data: [1*2 - 2*2 + 0.5*14, 2 - 14] = [5, -12], kept
    with torch.no_grad():
        assert torch.allclose(out(X).mean(0), torch.tensor([5.0, -12.0])) and torch.allclose(m(X).mean(0), out(X).mean(0))


# ------------------------------------------------------------------ zero-mean property

@pytest.mark.parametrize("seed", range(5))
def test_wanda_and_stade_rank_identically_on_zero_mean_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(16, 8)
    conv = nn.Conv2d(8, 4, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(8, 16, generator=g))
        conv.weight.copy_(torch.randn(4, 8, 1, 1, generator=g))
    x = torch.randn(4, 10, 16, generator=g) * torch.rand(16, generator=g) * 3
    x = x - x.reshape(-1, 16).mean(0)  # exactly zero-mean features over the 40 tokens
    xc = torch.randn(3, 8, 5, 5, generator=g) * 2
    xc = xc - xc.mean((0, 2, 3), keepdim=True)
    stats = {"lin": linear_batch_stats(x), "conv": conv_batch_stats(xc, conv)}
    model = nn.ModuleDict({"lin": lin, "conv": conv})
    for name, layer in (("lin", lin), ("conv", conv)):
        sw = wanda_w(name, layer, stats[name]).flatten()
        ss = stade_w(name, layer, stats[name]).flatten()
        assert torch.equal(sw.argsort(stable=True), ss.argsort(stable=True))
        # per-channel (single consumer): wanda with power=2 is (n-1) * stade exactly
        n = stats[name].count
        assert torch.allclose(sw.square(), (n - 1) * ss)
    for spec in ("0.5", "2:4", "4:8", "layer:0.3", "column:0.5"):
        mw, ms = wanda_masks(model, stats, spec), stade_masks(model, stats, spec)
        for name in ("lin", "conv"):
            assert torch.equal(mw.pruned[name], ms.pruned[name]), (spec, name)


def test_wanda_and_stade_differ_when_inputs_have_a_mean():
    # the property above is not vacuous: shifting one feature's mean changes Wanda's masks only
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(8, 4)
    x = torch.randn(64, 8, generator=g)
    x = x - x.mean(0)
    model = nn.ModuleDict({"lin": lin})
    st0 = {"lin": linear_batch_stats(x)}
    j = int(wanda_masks(model, st0).pruned["lin"].sum(0).argmax())  # the input Wanda prunes most
    shift = torch.zeros(8)
    shift[j] = 50.0
    st1 = {"lin": linear_batch_stats(x + shift)}
    assert wanda_masks(model, st0).pruned["lin"][:, j].any()
    assert not wanda_masks(model, st1).pruned["lin"][:, j].any()  # a large mean: never pruned by Wanda
    assert torch.equal(stade_masks(model, st0).pruned["lin"], stade_masks(model, st1).pruned["lin"])


# ------------------------------------------------------------------ compensation keeps the mean

class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class ConvConv(nn.Module):
    """conv1 -> ReLU -> conv2 (no bias, padding 1, stride 2) [-> BN]: the head is conv2."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 5, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(5) if bn else nn.Identity()
        if bn:
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.bn(self.conv2(torch.relu(self.conv1(x))))


def _mean_out(model, x):
    with torch.no_grad():
        y = model(x)
    return y.mean(0) if y.dim() == 2 else y.mean((0, 2, 3))


def _half_plan(model, x, gid):
    graph = PruneGraph(model, x[:2])
    g = next(g for g in graph.groups() if g.id == gid)
    keep = tuple(range(0, g.width, 2))
    return PruningPlan((GroupPlan(gid, g.width, keep),))


@pytest.mark.parametrize("kind", ["mlp", "conv", "conv+bn"])
def test_structured_compensation_keeps_the_mean_output(kind):
    torch.manual_seed(0)
    model = (MLP() if kind == "mlp" else ConvConv(bn=kind == "conv+bn")).eval()
    x = torch.randn(16, 6) + 1 if kind == "mlp" else torch.randn(8, 3, 9, 9) + 0.5
    consumer, gid = ("fc2", "fc1") if kind == "mlp" else ("conv2", "conv1")
    stats = collect_input_stats(model, [x[:5], x[5:]], [consumer])  # two batches: merged stats
    plan = _half_plan(model, x, gid)
    pruned = apply_plan_compensated(model, x[:2], plan, stats)
    plain = apply_plan(model, x[:2], plan)
    ref = _mean_out(model, x)
    assert getattr(pruned, consumer).weight.shape[1] < getattr(model, consumer).weight.shape[1]
    assert torch.allclose(_mean_out(pruned, x), ref, atol=1e-5), (_mean_out(pruned, x) - ref).abs().max()
    assert (_mean_out(plain, x) - ref).abs().max() > 1e-2  # without compensation the mean moves
    if kind == "conv+bn":  # the shift went into the BN's running mean: no new parameter
        assert pruned.conv2.bias is None and set(pruned.state_dict()) == set(model.state_dict())
    if kind == "conv":
        assert pruned.conv2.bias is not None and model.conv2.bias is None


def test_structured_compensation_from_removed_weights_is_zero_the_v2_bug():
    """Computing the shift after the weights are gone (STADE v2 HEAD's order) gives 0."""
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(16, 6) + 1
    stats = collect_input_stats(model, [x], ["fc2"])
    removed = {"fc2": [1, 3, 5, 7, 9, 11]}
    right = compensate_removed_inputs(model, removed, stats)["fc2"]
    zeroed = MLP().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.fc2.weight[:, removed["fc2"]] = 0
    wrong = compensate_removed_inputs(zeroed, removed, stats)["fc2"]
    assert torch.equal(wrong, torch.zeros(5, dtype=torch.float64)) and right.abs().min() > 0
    mu = stats["fc2"].mean
    assert torch.allclose(right, model.fc2.weight.double()[:, removed["fc2"]] @ mu[removed["fc2"]])


@pytest.mark.parametrize("spec", ["0.5", "2:4"])
def test_masked_compensation_keeps_the_mean_and_the_v2_order_does_not(spec):
    torch.manual_seed(0)
    model = ConvConv(bn=False).eval()
    x = torch.randn(8, 3, 9, 9) + 0.5
    stats = collect_input_stats(model, [x], ["conv2"])
    masks = stade_masks(model, stats, spec)
    ref = _mean_out(model, x)
    ours = apply_masks(model, masks, stats)
    assert torch.allclose(_mean_out(ours, x), ref, atol=1e-5)
    # v2 HEAD: zero first, then compute the bias from the zeroed weights -> shift 0
    zeroed = apply_masks(model, masks, compensate=False)
    bug = masked_shift(zeroed.conv2, masks.pruned["conv2"], stats["conv2"])
    assert torch.equal(bug, torch.zeros_like(bug))
    assert (_mean_out(zeroed, x) - ref).abs().max() > 1e-2


def test_compensation_on_a_resnet_keeps_logits_and_bn_means():
    from stages.load.cifar_resnet import CifarResNet

    torch.manual_seed(0)
    m = CifarResNet(depth=8, width=8, in_channels=1).eval()
    x = torch.randn(8, 1, 16, 16)
    # the last group feeds fc (a bias) through pool+flatten; layer2.0.conv1 feeds conv2 -> bn2 (folded)
    stats = collect_input_stats(m, [x], ["fc", "layer2.0.conv2"])
    graph = PruneGraph(m, x[:2])
    widths = {g.id: g.width for g in graph.groups()}
    for gid, probe in (("layer3.0.shortcut.0", None), ("layer2.0.conv1", "layer2.0.bn2")):
        plan = PruningPlan((GroupPlan(gid, widths[gid], tuple(range(1, widths[gid], 2))),))
        pruned = apply_plan_compensated(m, x[:2], plan, stats)
        if probe is None:
            assert torch.allclose(_mean_out(pruned, x), _mean_out(m, x), atol=1e-5)
        else:
            outs = []
            for net in (m, pruned):
                h = dict(net.named_modules())[probe].register_forward_hook(
                    lambda mod, i, o, acc=outs: acc.append(o.mean((0, 2, 3))))
                with torch.no_grad():
                    net(x)
                h.remove()
            assert torch.allclose(outs[0], outs[1], atol=1e-5)
        assert set(pruned.state_dict()) == set(m.state_dict())  # fc had a bias, conv2 folded into bn2


def test_bn_successors_and_bias_creation_roundtrip():
    model = ConvConv(bn=True).eval()
    x = torch.randn(2, 3, 9, 9)
    assert bn_successors(model, x) == {"conv2": "bn"}  # conv1 feeds a ReLU, not a BN
    plain = ConvConv(bn=False).eval()
    made = add_output_shift(plain, {"conv2": torch.ones(5, dtype=torch.float64)})
    assert made == ["conv2"] and plain.conv2.bias.tolist() == [1.0] * 5
    fresh = ConvConv(bn=False)
    assert ensure_bias_params(fresh, plain.state_dict()) == ["conv2"]
    fresh.load_state_dict(plain.state_dict())  # strict: keys match after ensure_bias_params
    with pytest.raises(ValueError, match="kept_out"):
        add_output_shift(plain, {"conv2": torch.ones(7, dtype=torch.float64)})
    add_output_shift(plain, {"conv2": torch.arange(7, dtype=torch.float64)}, kept_out={"conv2": [0, 2, 4, 5, 6]})
    assert plain.conv2.bias.tolist() == [1.0, 3.0, 5.0, 6.0, 7.0]


# ------------------------------------------------------------------ every group of real models

def _check_all_groups(model, x, names=("wanda", "stade", "stadew")):
    ctx = ctx_for(model, x)
    groups = ctx.graph.groups()
    for name in names:
        scores = CRITERIA.get(name)(ctx)
        assert set(scores) == {g.id for g in groups}, name
        for g in groups:
            s = scores[g.id]
            assert s.shape == (g.width,) and torch.isfinite(s).all(), (name, g.id)
            assert (s >= 0).all() and s.max() > 0, (name, g.id)  # a real score, not a fallback zero
    return ctx, groups


def test_structured_criteria_score_every_group_of_a_cifar_resnet():
    from stages.load.cifar_resnet import CifarResNet

    torch.manual_seed(0)
    _check_all_groups(CifarResNet(8, 8, 1).eval(), torch.randn(8, 1, 16, 16))


def test_structured_criteria_score_every_group_of_mobilenet_v2_and_compensate():
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    m = mobilenet_v2(num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    ctx, groups = _check_all_groups(m, x, ("wanda", "stade"))
    scores = CRITERIA.get("stade")(ctx)
    plan = make_plan(groups, scores, uniform_ratios(groups, 0.5), round_to=8)
    stats = collect_input_stats(m, [x])
    pruned = apply_plan_compensated(m, x[:2], plan, stats)
    with torch.no_grad():
        y = pruned(x)
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    # every bias-less projection conv is followed by its BN: shifts folded, checkpoint keys unchanged
    assert set(pruned.state_dict()) == set(m.state_dict())
