"""The search frame's time cap (never start a candidate that would end past it) and its progress words (best
means best feasible)."""

from __future__ import annotations

from search.base import Budgeted, Candidate, SearchLimits, best_line
from search.budget import Budgets


def _cand(ms: float, acc: float) -> Candidate:
    return Candidate(0.5, (ms,), ms, 10.0, acc, 1000, 100)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_next_candidate_may_not_end_past_the_time_cap():
    clock = _Clock()
    b = Budgeted(None, SearchLimits(max_candidates=100, time_limit_s=300), lambda s: None, clock)
    b.evaluations, clock.t = 2, 200.0  # 100 s a candidate: the third would end at 300 s, the fourth at 400 s
    assert b.exhausted() is None
    b.evaluations, clock.t = 3, 270.0  # 90 s each: the next would end at 360 s
    why = b.exhausted()
    assert why is not None and "time cap (300s)" in why and "past it" in why
    assert 0 < b.eta() <= 30.0


def test_best_means_within_budget_and_above_the_floor():
    budgets = Budgets(latency_ms=2.0, memory_mb=None, max_accuracy_drop=1.0, baseline_accuracy=99.0)
    fast_but_broken = _cand(1.5, 24.0)
    assert best_line([fast_but_broken], budgets).startswith("none feasible; in budget")
    assert "below the floor" in best_line([fast_but_broken], budgets)
    good = _cand(1.9, 98.5)
    assert best_line([fast_but_broken, good], budgets).startswith("best feasible 1.900 ms")
    assert best_line([_cand(3.0, 99.0)], budgets).startswith("none feasible; closest 3.000 ms")
