"""Greedy per-group search and the latency LUT, against a deterministic cost model."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from search.base import Candidate, SearchLimits
from search.budget import Budgets
from search.greedy import GreedySettings, search_greedy
from search.lut import LatencyLUT, build_lut, monotone, width_grid
from stages.model.graph import GroupInfo

GROUPS = [GroupInfo("a", 64, ("a",), ()), GroupInfo("b", 64, ("b",), ()), GroupInfo("c", 32, ("c",), ())]
FULL = {g.id: g.width for g in GROUPS}
COST = {"a": 4.0, "b": 4.0, "c": 2.0}  # ms each group costs at full width; latency is linear in width
SENS = {"a": 0.5, "b": 4.0, "c": 1.0}  # accuracy points lost per removed fraction


class Model:
    groups = GROUPS

    def __init__(self) -> None:
        self.measured = 0

    @staticmethod
    def widths(keep):
        return {g: round(FULL[g] * keep.get(g, 1.0)) for g in FULL}

    def latency(self, widths) -> float:
        return sum(COST[g] * widths[g] / FULL[g] for g in FULL)

    def accuracy(self, widths) -> float:
        return 99.0 - sum(SENS[g] * 10 * (1 - widths[g] / FULL[g]) ** 2 for g in FULL)

    def oneshot_accuracy(self, keep) -> float:
        return self.accuracy(self.widths(keep)) - 5.0

    def measure_policy(self, keep, policy) -> Candidate:
        self.measured += 1
        w = self.widths(keep)
        removed = 1 - sum(w.values()) / sum(FULL.values())
        return Candidate(removed, tuple(sorted(w.items())), self.latency(w), 10.0, self.oneshot_accuracy(keep),
                         100, 10, speedup=10.0 / self.latency(w), policy=dict(policy))

    def recover(self, c: Candidate) -> float:
        return self.accuracy(dict(c.key))

    def speedups(self, policies):
        return [10.0 / self.latency(self.widths(p)) for p in policies]


def lut_for(m: Model) -> LatencyLUT:
    """The exact table of the cost model (single-group speedups on the full grid)."""
    return LatencyLUT(10.0, {g.id: {w: 10.0 / (10.0 - COST[g.id] * (1 - w / g.width)) for w in width_grid(g.width, 8, 8)}
                             for g in GROUPS})


def test_lut_prediction_is_exact_for_additive_cost():
    lut = lut_for(Model())
    w = {"a": 32, "b": 48, "c": 16}
    assert lut.predict(w, FULL) == pytest.approx(Model().latency(w), rel=1e-6)


def test_lut_build_measures_each_group_grid_and_caches(tmp_path):
    m = Model()
    calls = []

    def speedups(p):
        calls.append(p)
        return m.speedups(p)

    parts = {"target_desc": "fake", "sample_shape": (1, 8, 8), "model_hash": "abc", "batch": 1}
    lut = build_lut(GROUPS, speedups, 10.0, 8, 4, parts, cache=tmp_path)
    assert len(calls) == 3 and set(lut.table) == {"a", "b", "c"}
    assert all(len(t) <= 4 for t in lut.table.values())
    again = build_lut(GROUPS, speedups, 10.0, 8, 4, parts, cache=tmp_path)
    assert len(calls) == 3 and again.table == lut.table  # from the disk cache, nothing re-measured
    build_lut(GROUPS, speedups, 10.0, 8, 4, {**parts, "target_desc": "other"}, cache=tmp_path)
    assert len(calls) == 6  # another target is another key


def test_monotone_fit_removes_inversions():
    fit = monotone({8: 1.3, 16: 1.35, 24: 1.1, 32: 0.9})
    ws = sorted(fit)
    assert all(fit[a] >= fit[b] for a, b in zip(ws, ws[1:]))
    assert fit[32] == 1.0  # never slower than the unpruned model


def test_width_grid_respects_round_to_and_points():
    assert width_grid(64, 8, 100) == [8, 16, 24, 32, 40, 48, 56]
    g = width_grid(128, 8, 4)
    assert len(g) == 4 and all(w % 8 == 0 for w in g) and g[0] == 8 and g[-1] == 120


def test_greedy_meets_budget_cutting_insensitive_groups_first():
    m = Model()
    res = search_greedy(m, lut_for(m), "latency", Budgets(7.0, None, 3.0, 99.0),
                        SearchLimits(max_candidates=30, latency_margin=0.0), GreedySettings(initial_reduction=0.1), 8)
    assert res.chosen.latency_ms <= 7.0 and "budget met" in res.stop_reason
    w = dict(res.chosen.key)
    assert w["a"] < w["b"]  # the group that costs little accuracy was cut more
    assert res.chosen.accepted and res.chosen.recovered


def test_greedy_rolls_back_on_accuracy_floor_and_stops_at_caps():
    m = Model()
    res = search_greedy(m, lut_for(m), "latency", Budgets(2.0, None, 0.5, 99.0),
                        SearchLimits(max_candidates=12), GreedySettings(initial_reduction=0.2), 8)
    assert "not reachable" in res.stop_reason
    for c in res.candidates:
        if c.accepted:
            assert 99.0 - c.accuracy <= 0.5
    assert m.measured <= 12


def test_greedy_needs_a_latency_objective():
    m = Model()
    with pytest.raises(ConfigError, match="needs objective 'latency'"):
        search_greedy(m, lut_for(m), "memory", Budgets(None, 10.0, 1.0, 99.0), SearchLimits(), GreedySettings(), 8)


def test_lut_calibration_reports_error():
    lut = LatencyLUT(10.0, {})  # no table: every prediction is the baseline, 10 ms
    full = {"a": 64}
    lut.observe({"a": 64}, full, 8.0)
    cal = lut.calibration(full)
    # one point: leave-one-out predicts it with no fit at all (10 ms for 8 ms measured)
    assert cal["n"] == 1 and cal["max_abs_rel_err"] == pytest.approx(0.25) and cal["mean_abs_rel_err"] == pytest.approx(0.25)
    assert cal["raw"]["mean_abs_rel_err"] == pytest.approx(0.25) and cal["online"]["mean_abs_rel_err"] == pytest.approx(0.25)
    assert lut.predict({"a": 64}, full) == pytest.approx(8.0)  # the offset fit of that point
