"""Intervals of the verdict: order-statistic median intervals, Wilson intervals, and decisions, by hand."""

from __future__ import annotations

import math

import pytest

from core.stats import decide, median_interval, rounds_for, wilson_interval


def test_median_interval_coverage_by_hand():
    # n = 6: [min, max] covers the median with 1 - 2 / 64 = 96.875%
    iv = median_interval([3.0, 1.0, 2.0, 6.0, 5.0, 4.0])
    assert (iv.estimate, iv.low, iv.high, iv.n) == (3.5, 1.0, 6.0, 6)
    assert iv.level == pytest.approx(1 - 2 / 64)
    # n = 10: k = 2 gives 1 - 2 * 11 / 1024 = 97.85%; k = 3 would give 89.06% < 95%
    iv = median_interval(list(range(1, 11)))
    assert (iv.low, iv.high) == (2, 9) and iv.level == pytest.approx(1 - 22 / 1024)


def test_too_few_rounds_cannot_reach_95_percent():
    iv = median_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (iv.low, iv.high) == (1.0, 5.0) and iv.level == pytest.approx(0.9375)
    assert rounds_for(0.95) == 6 and rounds_for(0.99) == 8
    assert math.isnan(median_interval([]).estimate)


def test_wilson_interval_by_hand():
    iv = wilson_interval(45, 50)  # p = 0.9, z = 1.96: [0.786, 0.957]
    assert iv.estimate == pytest.approx(90.0)
    assert iv.low == pytest.approx(78.64, abs=0.05) and iv.high == pytest.approx(95.65, abs=0.05)
    full = wilson_interval(50, 50)
    assert full.high == pytest.approx(100.0) and full.low < 100.0


@pytest.mark.parametrize("low, high, budget, at_least, want", [
    (2.1, 2.4, 2.0, True, "met"),
    (1.5, 1.9, 2.0, True, "not_met"),
    (1.9, 2.2, 2.0, True, "undecided"),
    (4.0, 4.5, 5.0, False, "met"),       # a latency: the whole interval under the budget
    (5.5, 6.0, 5.0, False, "not_met"),
    (4.5, 5.5, 5.0, False, "undecided"),
])
def test_decide(low, high, budget, at_least, want):
    from core.stats import Interval

    assert decide(Interval((low + high) / 2, low, high, 0.96, 6, "t"), budget, at_least) == want
