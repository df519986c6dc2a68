"""Budgets keep the user's unit; one verdict for every search and the report."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from search.budget import Budgets, Observed, verdict


def cand(latency_ms: float, speedup: float | None, memory_mb: float = 10.0):
    return SimpleNamespace(latency_ms=latency_ms, speedup=speedup, memory_mb=memory_mb)


def test_a_speedup_budget_is_compared_with_the_measured_speedup_directly():
    b = Budgets(None, None, 1.0, 99.0, speedup=2.0)
    # the ms figure is irrelevant: a slower machine's 5 ms at 2.1x meets a 2x budget, a fast 0.1 ms at 1.9x does not
    assert b.resources_met(cand(5.0, 2.1)) and not b.resources_met(cand(0.1, 1.9))
    assert b.resources_met(cand(1.0, 2.2), margin=0.05) and not b.resources_met(cand(1.0, 2.05), margin=0.05)
    assert not b.resources_met(cand(1.0, None))  # no measured speedup: fail closed
    assert b.slack(cand(1.0, 2.5)) == {"latency": pytest.approx(2.0 / 2.5 - 1)}
    assert b.slack(cand(1.0, None)) == {"latency": math.inf}
    assert b.latency_limit_ms(3.0) == 1.5 and b.has_latency


def test_the_two_latency_forms_give_the_same_slack_for_the_same_point():
    base_ms, s = 4.0, 2.0
    c = cand(base_ms / 2.5, 2.5)
    by_speedup = Budgets(None, None, None, None, speedup=s).slack(c, margin=0.05)["latency"]
    by_ms = Budgets(base_ms / s, None, None, None).slack(c, margin=0.05)["latency"]
    assert by_speedup == pytest.approx(by_ms)


def test_memory_and_the_accuracy_floor():
    b = Budgets(None, 20.0, 1.0, 99.0)
    assert b.resources_met(cand(1.0, None, 20.0)) and not b.resources_met(cand(1.0, None, 20.1))
    assert b.accuracy_met(98.0) and not b.accuracy_met(97.9) and b.accuracy_met(None)
    assert b.accuracy_slack(97.0) == pytest.approx(1.0) and Budgets(None, None, None, 99.0).accuracy_slack(1.0) is None


def test_the_verdict_says_which_budget_failed_and_by_how_much():
    b = Budgets(None, 18.0, 1.0, 99.78, speedup=2.0)
    v = verdict(b, Observed(0.55, 18.5, 1.9, 98.5, "top1"), baseline_ms=1.04)
    assert not v.met and len(v.violations) == 3
    assert v.violations[0] == "speedup 1.90x < required 2.00x (short by 5.0%; baseline 1.040 ms, final 0.550 ms)"
    assert v.violations[1] == "memory 18.5 MB > budget 18.0 MB (over by 0.5 MB)"
    assert v.violations[2] == "top1 drop 1.28 pts > allowed 1.00 pts (99.78% -> 98.50%)"
    assert verdict(b, Observed(0.5, 17.0, 2.05, 99.0)).met
    lat = verdict(Budgets(0.5, None, None, None), Observed(0.6, None, None))
    assert lat.violations == ["latency 0.600 ms > budget 0.500 ms (over by 0.100 ms, 20.0%)"]


def test_budgets_round_trip_and_read_the_four_key_form_of_older_studies():
    b = Budgets(None, 18.0, 1.0, 99.0, speedup=2.0)
    assert Budgets.from_json(b.to_json()) == b
    old = {"latency_ms": 0.5, "memory_mb": None, "max_accuracy_drop": 1.0, "baseline_accuracy": 99.0}
    assert Budgets.from_json(old) == Budgets(0.5, None, 1.0, 99.0)
