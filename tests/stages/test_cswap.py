"""C-SWAP: causal effects by hand, the t-test classes, and the progressive procedure.

The hand model (``HandNet``): ``h = relu(fc1 x)`` with fc1 = [[1,0],[0,1],[0,0]], bias [0,0,1],
so ``h = (x0, x1, 1)`` for x >= 0; logits ``z = fc2 h = (h0 - h2, h1)``.

Scoring samples ``x = (a, 0)``, a in {1, 2, 3, 4}, class 0; ``p_0 = sigmoid(z0 - z1)``:

    clean           z = (a - 1, 0)   p0 = s(a - 1)
    do(h0 = 0)      z = (-1, 0)      p0 = s(-1)    d = s(a - 1) - s(-1) > 0   -> critical
    do(h1 = 0)      nothing changes                d = 0                      -> neutral
    do(h2 = 0)      z = (a, 0)       p0 = s(a)     d = s(a - 1) - s(a) < 0    -> detrimental

Held-out samples: (2,0), (3,0), (5,0) of class 0 and (1.5, 2) of class 1 (clean z = (0.5, 2)).
Removing h2 keeps all four right; removing h1 turns (1.5, 2) into class 0 (z = (0.5, 0)): 75 %.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import ConfigError
from stages.model.graph import GroupInfo, PruneGraph
from stages.prune.plan import make_plan
from stages.score import CRITERIA, ScoreContext
from stages.score.cswap import progressive, ranking_scores, ttest_classes


class HandNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.fc2 = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
            self.fc1.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
            self.fc2.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))
            self.fc2.bias.zero_()

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


A = torch.tensor([1.0, 2.0, 3.0, 4.0])
SCORING = torch.stack([A, torch.zeros(4)], 1)
HELDOUT = torch.tensor([[2.0, 0.0], [3.0, 0.0], [5.0, 0.0], [1.5, 2.0]])
HELDOUT_Y = torch.tensor([0, 0, 0, 1])


def s(v):
    return torch.sigmoid(torch.as_tensor(v, dtype=torch.float64))


def ctx_for(x, y, **options):
    m = HandNet().eval()
    return ScoreContext(model=m, graph=PruneGraph(m, x[:2]), calib=TensorDataset(x, y), batches=1,
                        batch_size=len(x), options=options)


def t_pvalue(d):
    t = d.mean() / (d.std() / math.sqrt(len(d)))  # torch std is the unbiased one
    return float(2 * stats.t.sf(abs(float(t)), len(d) - 1))


def test_xi_and_classes_by_hand():
    ctx = ctx_for(SCORING, torch.zeros(4, dtype=torch.long), progressive=False, alpha=0.1)
    res = CRITERIA.get("cswap").result(ctx)
    xi = torch.tensor(res.meta["xi"]["fc1"], dtype=torch.float64)
    d0, d2 = s(A - 1) - s(-1.0), s(A - 1) - s(A)
    expected = torch.stack([d0.mean(), torch.tensor(0.0, dtype=torch.float64), d2.mean()])
    assert torch.allclose(xi, expected, atol=1e-6)
    assert t_pvalue(d0) < 0.05 and 0.05 < t_pvalue(d2) < 0.1  # so at alpha 0.1 both are significant
    assert (res.meta["critical"], res.meta["neutral"], res.meta["detrimental"]) == (1, 1, 1)
    sc = res.scores["fc1"]
    # not progressive: candidates in order (detrimental h2, then neutral h1) score lowest, then xi
    assert sc[2] < sc[1] < sc[0] and float(sc[0]) == pytest.approx(float(expected[0]), abs=1e-6)
    assert res.passes["forward"] >= 1
    assert res.proposal is None  # no verified procedure, no plan


def test_mean_intervention_by_hand():
    ctx = ctx_for(SCORING, torch.zeros(4, dtype=torch.long), progressive=False, intervention="mean")
    res = CRITERIA.get("cswap").result(ctx)
    # fc1's output means over the 4 samples: (2.5, 0, 1): do(h0 = 2.5) gives z = (1.5, 0)
    xi0 = float((s(A - 1) - s(1.5)).mean())
    assert res.meta["xi"]["fc1"][0] == pytest.approx(xi0, abs=1e-6)
    assert res.meta["xi"]["fc1"][1:] == [0.0, 0.0]  # h1 and h2 are constant: the mean is the value


def test_unlabelled_samples_use_the_models_predictions():
    x = SCORING
    lab = CRITERIA.get("cswap").result(ctx_for(x, torch.zeros(4, dtype=torch.long), progressive=False))
    unl = CRITERIA.get("cswap").result(ctx_for(x, torch.full((4,), -1), progressive=False))
    # the model predicts class 0 for every scoring sample (a = 1 is a tie, argmax takes 0)
    assert unl.meta["xi"] == lab.meta["xi"]


def test_progressive_undoes_a_breaking_chunk_and_swaps_in_its_good_half():
    x = torch.cat([SCORING, HELDOUT])
    y = torch.cat([torch.zeros(4, dtype=torch.long), HELDOUT_Y])
    res = CRITERIA.get("cswap").result(ctx_for(x, y, chunk=1.0, tolerance=1.0, alpha=0.1))
    meta = res.meta
    assert meta["heldout_base"] == 100.0
    # chunk {h2, h1} drops to 75 -> undone; halves: {h2} passes (swapped in), {h1} breaks (kept)
    assert meta["trace"][0] == {"size": 2, "metric": 75.0, "accepted": False}
    assert (meta["undone_chunks"], meta["swapped_in"], meta["kept_by_swap"], meta["accepted"]) == (1, 1, 1, 1)
    assert meta["heldout_final"] >= meta["heldout_base"] - 1.0
    sc = res.scores["fc1"]
    assert sc[2] < sc[1] < sc[0]  # accepted h2 lowest; then by xi: h1 (0) below h0 (> 0)
    assert res.proposal == {"fc1": 2}  # the plan search 'cswap' prunes: width 3 - 1 accepted


def test_progressive_never_keeps_a_chunk_that_breaks_the_tolerance():
    bad = {("g", 2), ("g", 6), ("g", 7)}

    def evaluate(removed):
        return 100.0 - 5.0 * sum((g, c) in bad for g, cs in removed.items() for c in cs)

    cands = [("g", i) for i in range(10)]
    seen = []

    def recording(removed):
        m = evaluate(removed)
        seen.append((sorted(removed["g"]), m))
        return m

    order, st = progressive(cands, {"g": 12}, recording, 100.0, chunk=4, budget=10, tolerance=1.0)
    # chunk 0-3 breaks (2): halves 0,1 in; 2,3 kept. 4-7 breaks (6, 7): 4,5 in; 6,7 kept. 8,9 in.
    assert order == [("g", 0), ("g", 1), ("g", 4), ("g", 5), ("g", 8), ("g", 9)]
    assert st["undone_chunks"] == 2 and st["kept_by_swap"] == 4 and st["swapped_in"] == 4
    for k in range(1, len(order) + 1):  # every accepted prefix is within the tolerance
        assert evaluate({"g": [c for _, c in order[:k]]}) >= 99.0
    assert not bad & set(order)


def test_progressive_floor_holds_when_channels_interact():
    """Damage that is not additive (pairs hurt together, a channel hurts only after another went): every
    evaluation the procedure accepted, and the final accepted set, stay within the tolerance."""
    gen = torch.Generator().manual_seed(0)
    pair = torch.rand(24, 24, generator=gen) * 1.5

    def evaluate(removed):
        r = [c for cs in removed.values() for c in cs]
        return 100.0 - sum(float(pair[i, j]) for i in r for j in r if i < j) / 4 - 0.9 * (7 in r and 3 in r)

    cands = [("g", i) for i in range(24)]
    for chunk in (1, 3, 5, 8):
        order, st = progressive(cands, {"g": 30}, evaluate, 100.0, chunk=chunk, budget=24, tolerance=1.0)
        assert order and all(e["metric"] >= 99.0 for e in st["trace"] if e["accepted"])
        assert evaluate({"g": [c for _, c in order]}) >= 99.0 - 1e-9
        assert st["heldout_final"] == pytest.approx(evaluate({"g": [c for _, c in order]}))
        assert any(not e["accepted"] for e in st["trace"])  # the case does break the floor somewhere


def test_progressive_patience_stops_after_fruitless_chunks():
    def evaluate(removed):
        return 100.0 - 5.0 * sum(c >= 4 for c in removed["g"])

    cands = [("g", i) for i in range(10)]
    order, st = progressive(cands, {"g": 12}, evaluate, 100.0, chunk=2, budget=10, tolerance=1.0, patience=2)
    # [0,1] in, [2,3] in, [4,5] and its halves fail, [6,7] and its halves fail: stop before [8,9]
    assert order == [("g", 0), ("g", 1), ("g", 2), ("g", 3)]
    assert st["stopped"] == "patience" and st["evaluations"] == 2 + 3 + 3
    _, st0 = progressive(cands, {"g": 12}, evaluate, 100.0, chunk=2, budget=10, tolerance=1.0, patience=0)
    assert st0["stopped"] == "candidates" and st0["evaluations"] == 2 + 3 * 3


def test_progressive_respects_budget_and_keeps_one_channel_per_group():
    order, st = progressive([("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)], {"a": 3, "b": 4},
                            lambda r: 100.0, 100.0, chunk=2, budget=3, tolerance=0.0)
    assert order == [("a", 0), ("a", 1), ("b", 0)]  # a keeps one channel; the budget stops at 3
    assert st["kept_last_channel"] == 1


def test_ttest_classes():
    d = torch.tensor([
        [1.0, 1.0, 1.0, 1.0],  # zero variance, mean > 0: critical, p = 0
        [0.0, 0.0, 0.0, 0.0],  # no effect: neutral, p = 1
        [-1.0, -2.0, -1.0, -2.0],  # detrimental
        [1.0, -1.0, 1.0, -1.0],  # mean 0: neutral
        [0.3, 0.1, 0.4, 0.2],  # an ordinary row: scipy's p-value
    ])
    xi, p, cls = ttest_classes(d, alpha=0.05)
    assert cls.tolist() == [1, 0, -1, 0, 1]
    assert p[0] == 0 and p[1] == 1
    assert float(p[4]) == pytest.approx(stats.ttest_1samp([0.3, 0.1, 0.4, 0.2], 0.0).pvalue, rel=1e-9)
    assert torch.allclose(xi, d.double().mean(1))
    _, p1, cls1 = ttest_classes(d[:, :1], alpha=0.05)  # one sample: nothing is significant
    assert (cls1 == 0).all() and (p1 == 1).all()


def test_scores_make_the_procedure_a_ranking():
    xi = {"g1": torch.tensor([0.5, -0.1, 0.2, 0.0]), "g2": torch.tensor([0.3, 0.1, -0.2])}
    order = [("g1", 2), ("g2", 0), ("g1", 0)]
    sc = ranking_scores(xi, order)
    assert sc["g1"][2] < sc["g2"][0] < sc["g1"][0] < min(float(sc["g1"][1]), float(sc["g2"][2]))
    assert float(sc["g2"][1]) == pytest.approx(0.1) and float(sc["g1"][3]) == 0.0
    groups = [GroupInfo("g1", 4, ("g1",), ()), GroupInfo("g2", 3, ("g2",), ())]
    for keep, prefix in ((0.75, {2}), (0.5, {2, 0})):  # g1 loses its accepted channels first, in order
        plan = make_plan(groups, sc, {"g1": keep, "g2": 1.0}, None)
        assert set(range(4)) - set(plan.groups[0].keep) == prefix


def test_bad_options_are_config_errors():
    for opt in ({"intervention": "ones"}, {"alpha": 0.0}, {"chunk": 0.0}, {"max_fraction": 1.5},
                {"tolerance": -1.0}):
        with pytest.raises(ConfigError):
            CRITERIA.get("cswap").result(ctx_for(SCORING, torch.zeros(4, dtype=torch.long), **opt))
