"""Search logic against a deterministic cost model (no model, no runtime)."""

from __future__ import annotations

import itertools

import pytest

from search.base import Candidate, SearchLimits
from search.budget import Budgets
from search.global_ratio import search_global


class CostModel:
    """latency = 10 * (1 - r)^2 ms, memory = 100 * (1 - r) MB, accuracy = 99 - 40 r^3 (recovered: +half the loss)."""

    def __init__(self, staircase: float = 0.0) -> None:
        self.measured: list[float] = []
        self.recovered: list[float] = []
        self.staircase = staircase

    def measure(self, ratio: float) -> Candidate:
        self.measured.append(ratio)
        r = round(ratio / self.staircase) * self.staircase if self.staircase else ratio
        return Candidate(ratio, (round(r, 6),), 10 * (1 - r) ** 2, 100 * (1 - r), 99 - 40 * r ** 3, 1000, 100)

    def recover(self, c: Candidate) -> float:
        self.recovered.append(c.ratio)
        return 99 - 20 * c.ratio ** 3


def test_latency_bisection_finds_smallest_feasible_ratio():
    ev = CostModel()
    budgets = Budgets(latency_ms=2.5, memory_mb=None, max_accuracy_drop=5, baseline_accuracy=99)
    res = search_global(ev, "latency", budgets, SearchLimits(max_ratio=0.9, min_step=0.01, latency_margin=0.0))
    # 10 (1-r)^2 <= 2.5  <=>  r >= 0.5
    assert res.chosen is not None and 0.5 <= res.chosen.ratio <= 0.52
    assert res.chosen.latency_ms <= 2.5 and res.chosen.recovered and res.chosen.accepted
    assert all(c.feasible == (c.latency_ms <= 2.5) for c in res.candidates)
    assert len(res.candidates) <= SearchLimits().max_candidates


def test_latency_margin_keeps_chosen_point_under_budget():
    res = search_global(CostModel(), "latency", Budgets(2.5, None, None, 99),
                        SearchLimits(min_step=0.005, latency_margin=0.05))
    assert res.chosen.latency_ms <= 2.5 * 0.95


def test_memory_objective_and_combined_budgets():
    res = search_global(CostModel(), "memory", Budgets(latency_ms=5.0, memory_mb=40.0, max_accuracy_drop=None,
                                                       baseline_accuracy=99), SearchLimits(min_step=0.01, latency_margin=0))
    # memory 100 (1-r) <= 40 needs r >= 0.6, latency needs r >= 0.293: the binding one wins
    assert 0.6 <= res.chosen.ratio <= 0.62


def test_unpruned_model_already_meets_budget():
    ev = CostModel()
    res = search_global(ev, "latency", Budgets(20.0, None, 1.0, 99), SearchLimits())
    assert res.chosen.ratio == 0.0 and ev.measured == [0.0]
    assert "already meets" in res.stop_reason


def test_impossible_budget_returns_best_candidate_and_stops():
    ev = CostModel()
    res = search_global(ev, "latency", Budgets(0.001, None, 1.0, 99), SearchLimits(max_ratio=0.9))
    assert "not reachable" in res.stop_reason
    assert res.chosen.ratio == 0.9 and not res.chosen.feasible
    assert len(ev.measured) == 2  # baseline and max ratio: no endless loop


def test_candidate_cap_bounds_the_search():
    ev = CostModel()
    res = search_global(ev, "latency", Budgets(2.5, None, None, 99), SearchLimits(min_step=1e-6, max_candidates=5))
    assert "candidate cap" in res.stop_reason and len(ev.measured) <= 5


def test_time_cap_bounds_the_search():
    ticks = itertools.count(step=50.0)
    res = search_global(CostModel(), "latency", Budgets(2.5, None, None, 99),
                        SearchLimits(min_step=1e-6, max_candidates=1000, time_limit_s=120), clock=lambda: next(ticks))
    assert "time cap" in res.stop_reason


def test_staircase_duplicates_are_measured_once():
    ev = CostModel(staircase=0.25)
    res = search_global(ev, "latency", Budgets(2.5, None, None, 99), SearchLimits(min_step=0.01, latency_margin=0))
    keys = [c.key for c in res.candidates]
    assert len(keys) == len(set(keys))
    assert res.chosen.ratio == pytest.approx(0.5, abs=0.13)


def test_accuracy_objective_rolls_back_and_halves_step():
    ev = CostModel()
    # recovered accuracy 99 - 20 r^3 >= 98  <=>  r <= 0.368
    res = search_global(ev, "accuracy", Budgets(None, None, 1.0, 99), SearchLimits(step=0.2, min_step=0.02))
    assert res.chosen.ratio <= 0.3685
    assert res.chosen.ratio >= 0.3  # it climbed past 0.2 after halving the step
    # the rejected step 0.4 was measured but never chosen
    assert 0.4 in ev.measured and res.chosen.ratio != 0.4
    steps = [b - a for a, b in zip(ev.measured, ev.measured[1:])]
    assert any(abs(s - 0.1) < 1e-6 for s in steps)  # step halved from 0.2 to 0.1 after the rollback


def test_accuracy_objective_never_accepts_a_floor_breaking_point():
    res = search_global(CostModel(), "accuracy", Budgets(None, None, 0.5, 99), SearchLimits())
    for c in res.candidates:
        if c.accepted:
            assert 99 - c.accuracy <= 0.5


class LuckyFirst(CostModel):
    """The first measurement of every candidate reads 40% fast; the confirmation tells the truth."""

    def measure(self, ratio: float) -> Candidate:
        c = super().measure(ratio)
        c.payload = {"true": c.latency_ms}
        c.latency_ms *= 0.6
        return c

    def confirm(self, c: Candidate) -> Candidate:
        c.latency_ms = c.payload["true"]
        c.payload["confirmed"] = True
        return c


def test_lucky_first_measurement_is_confirmed_before_it_counts():
    res = search_global(LuckyFirst(), "latency", Budgets(2.5, None, None, 99),
                        SearchLimits(min_step=0.01, latency_margin=0.0))
    assert res.chosen.latency_ms <= 2.5 and res.chosen.ratio >= 0.5  # not fooled into r ~ 0.23


@pytest.mark.parametrize("objective, budgets", [("latency", Budgets(2.5, None, None, 99)),
                                                ("accuracy", Budgets(None, None, 1.0, 99))])
def test_global_progress_reports_every_measurement_with_the_best(objective, budgets):
    ticks: list[tuple[int, int, str]] = []
    res = search_global(CostModel(), objective, budgets, SearchLimits(max_candidates=7),
                        progress=lambda d, t, s: ticks.append((d, t, s)))
    assert [d for d, _, _ in ticks] == list(range(1, len(ticks) + 1)) and len(ticks) >= 3
    assert all(t == 7 for _, t, _ in ticks) and len(ticks) <= 7
    assert ticks[-1][2].startswith("best ") and len({c.key for c in res.candidates}) <= len(ticks)
