"""The final measurement's sequential rule: more rounds until the interval decides, or the cap (inconclusive)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from pipeline.cli import EXIT_INCONCLUSIVE, EXIT_MET, EXIT_UNMET, verdict_exit
from pipeline.final_measure import FinalSettings, measure_until_decided
from search.budget import Budgets, Observed, verdict


@dataclass
class Rec:
    round_medians_ms: list
    memory_mb: float = 10.0

    def __getitem__(self, key):
        return {"latency_ms": {"median": sorted(self.round_medians_ms)[len(self.round_medians_ms) // 2]}}[key]


def fake(ratios):
    """A measure(rounds) whose baseline rounds are 10 ms and final rounds 10 / ratio ms, ratios cycled."""
    it = itertools.cycle(ratios)
    calls = []

    def measure(rounds):
        rs = [next(it) for _ in range(rounds)]
        calls.append(rounds)
        return [Rec([10.0] * rounds), Rec([10.0 / r for r in rs])]

    return measure, calls


def clock_of(step: float):
    t = itertools.count()
    return lambda: next(t) * step


def test_a_clear_speedup_is_decided_once_the_interval_has_its_coverage():
    measure, calls = fake([2.5, 2.6, 2.4])
    pool = measure_until_decided(measure, Budgets(None, None, None, None, speedup=2.0), FinalSettings(3, 600, 0.95),
                                 clock=clock_of(1.0))
    assert calls == [3] * 6 and len(pool.ratios) == 18  # 6 calls (processes): 96.9% for [min, max]
    iv = pool.intervals(0.95)["speedup"]
    assert iv.low >= 2.0 and iv.n == 6 and pool.speedup == pytest.approx(2.5)


def test_the_call_is_the_unit_correlated_rounds_do_not_narrow_the_interval():
    """Two processes whose rounds agree with each other but not across processes (a loaded machine): 6 rounds
    of one call would give a tight interval; over calls it stays as wide as the calls disagree."""
    per_call = itertools.cycle([[6.4, 6.6, 6.5], [2.3, 2.4, 2.5]])

    def measure(rounds):
        rs = next(per_call)
        return [Rec([10.0] * rounds), Rec([10.0 / r for r in rs])]

    pool = measure_until_decided(measure, Budgets(None, None, None, None, speedup=3.7), FinalSettings(3, 30, 0.95),
                                 clock=clock_of(1.0))
    iv = pool.intervals(0.95)["speedup"]
    assert pool.calls >= 6 and iv.low == pytest.approx(2.4) and iv.high == pytest.approx(6.5)
    v = verdict(Budgets(None, None, None, None, speedup=3.7),
                Observed(5.0, None, pool.speedup, intervals=pool.intervals(0.95)))
    assert v.status == "inconclusive"


def test_a_straddling_speedup_stops_at_the_cap_inconclusive():
    measure, calls = fake([1.9, 2.1])
    pool = measure_until_decided(measure, Budgets(None, None, None, None, speedup=2.0), FinalSettings(3, 10, 0.95),
                                 clock=clock_of(1.0))
    assert len(calls) >= 2 and len(pool.ratios) == 3 * len(calls)
    v = verdict(Budgets(None, None, None, None, speedup=2.0),
                Observed(5.0, None, pool.speedup, intervals=pool.intervals(0.95)))
    assert v.status == "inconclusive" and not v.met and "not decided" in v.undecided[0]


def test_decisive_violation_elsewhere_makes_it_not_met_not_inconclusive():
    from core.stats import Interval

    iv = {"speedup": Interval(2.0, 1.9, 2.1, 0.97, 6, "t")}
    b = Budgets(None, 50.0, None, None, speedup=2.0)
    v = verdict(b, Observed(5.0, 80.0, 2.0, intervals=iv))
    assert v.status == "not_met" and v.undecided and "memory" in v.violations[0]


def test_no_latency_budget_needs_one_call():
    measure, calls = fake([1.0])
    measure_until_decided(measure, Budgets(None, 100.0, None, None), FinalSettings(3, 600, 0.95), clock=clock_of(1.0))
    assert calls == [3]


def test_exit_codes_follow_the_verdict():
    assert verdict_exit({"verdict": "met", "met": True}) == EXIT_MET == 0
    assert verdict_exit({"verdict": "not_met", "met": False}) == EXIT_UNMET == 1
    assert verdict_exit({"verdict": "inconclusive", "met": False}) == EXIT_INCONCLUSIVE == 3
    assert verdict_exit({"met": False}) == 1  # a report from before three-state verdicts


def test_a_model_against_itself_is_inconclusive_exit_3(cli, tmp_path):
    """Speedup budget 1.0: the unpruned model already meets it, so the final model is the baseline; with no
    time to add calls (cap 0, one measuring process: no coverage) the verdict cannot be met or not met: exit 3."""
    import json

    from tests.conftest import FAST_YAML

    cfg = tmp_path / "c.yaml"
    cfg.write_text(FAST_YAML.replace("speedup: 1.3", "speedup: 1.0").replace(
        "final_rounds: 2,", "final_rounds: 2, verdict_cap_s: 0,"))
    out = tmp_path / "run"
    rc, stdout, err = cli("run", "--config", cfg, "--recovery-steps", "0", "--out", out)
    assert rc == 3, err
    c = json.loads((out / "report.json").read_text())["constraints"]
    assert c["verdict"] == "inconclusive" and not c["met"] and c["undecided"] and "quiet" in c["advice"]
    assert c["intervals"]["speedup"]["n"] == 1 and c["intervals"]["speedup"]["level"] < 0.95
    assert "inconclusive" in stdout and "Verdict: inconclusive" in (out / "report.md").read_text()
    rc2, _, _ = cli("report", str(out))
    assert rc2 == 3
