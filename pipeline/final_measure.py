"""The final measurement of the verdict: measuring processes until the interval decides, or the cap.

The baseline and the final model are measured together (:mod:`targets.timing`: interleaved rounds
in one fresh process, a *call*). Within a call, each round gives a ratio (baseline round median /
final round median) and the call's ratio is the median of its rounds. **The speedup is the median
over calls of the call ratio** (with one call: the median per-round ratio): the one definition used
by the verdict, report.json's ``speedup``, report.md and the console.

Why the call is the unit: on a loaded machine the ratio moves *between processes* far more than
between rounds of one process (measured here with one core busy: one call's rounds all at 6.4-8.5x,
another's at 2.3-3.7x; ``bench/results/verdict_flaps.md``). An interval over rounds treats a call's
correlated rounds as independent and is far too narrow: it decided met in one repetition and not
met in another for the same model. Over calls, the interval sees the process-to-process spread.

Its confidence interval is the order-statistic interval of that median (:func:`core.stats.median_interval`)
over the call ratios, and the final latency's the same interval over the calls' median final round
latency. At 95% that needs **6 calls** at least ([min, max] of 6 covers 96.9%).

Sequential rule: measure ``final_rounds`` rounds per call; while the latency budget is undecided
(the interval straddles the budget, or has not yet reached the required coverage), make one more
call, until it is decided or the next call would pass ``verdict_cap_s``. What is still undecided then
makes the run **inconclusive** (exit 3).

The record of each engine is the last call's (per-call latency statistics), with the pooled round
medians, the speedup and the intervals; memory is the median over calls.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.stats import Interval, median_interval, rounds_for
from search.budget import Budgets, Observed, verdict


@dataclass(frozen=True)
class FinalSettings:
    """``rounds`` per call, ``cap_s`` for all calls together, ``level`` the coverage an interval needs."""

    rounds: int = 5
    cap_s: float = 120.0
    level: float = 0.95


@dataclass
class Pooled:
    """Rounds of every call: baseline and final round medians, per-round ratios, memory per call."""

    records: list = field(default_factory=list)  # the last call's TimingRecords (baseline, final)
    base_ms: list[float] = field(default_factory=list)
    final_ms: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # every round's
    call_ratios: list[float] = field(default_factory=list)  # per call: the median of its rounds' ratios
    call_final_ms: list[float] = field(default_factory=list)  # per call: the median final round latency
    memory: list[list[float]] = field(default_factory=lambda: [[], []])
    calls: int = 0
    seconds: float = 0.0

    def add(self, records: Sequence[Any]) -> None:
        base, final = records[0], records[1]
        self.records = list(records)
        self.base_ms += list(base.round_medians_ms)
        self.final_ms += list(final.round_medians_ms)
        ratios = [a / b for a, b in zip(base.round_medians_ms, final.round_medians_ms) if b > 0]
        self.ratios += ratios
        if ratios:
            self.call_ratios.append(statistics.median(ratios))
            self.call_final_ms.append(statistics.median(final.round_medians_ms))
        for i, r in enumerate((base, final)):
            if r.memory_mb is not None:
                self.memory[i].append(float(r.memory_mb))
        self.calls += 1

    @property
    def speedup(self) -> float:
        """The median over calls of the call ratio (the module doc)."""
        return statistics.median(self.call_ratios) if self.call_ratios else math.nan

    def intervals(self, level: float) -> dict[str, Interval]:
        """Order-statistic intervals over calls: of the speedup and of the final latency."""
        return {"speedup": median_interval(self.call_ratios, level),
                "latency_ms": median_interval(self.call_final_ms, level)}

    def ratio_cv(self) -> float:
        """Coefficient of variation of the per-round ratios (how noisy the comparison was)."""
        if len(self.ratios) < 2:
            return 0.0
        return statistics.stdev(self.ratios) / statistics.fmean(self.ratios)

    def memory_mb(self, i: int) -> float | None:
        return statistics.median(self.memory[i]) if self.memory[i] else None


def latency_budgets(b: Budgets) -> Budgets:
    """Only the latency part of ``b``: what more rounds can decide."""
    return Budgets(b.latency_ms, None, None, None, speedup=b.speedup)


def measure_until_decided(measure: Callable[[int], Sequence[Any]], budgets: Budgets, s: FinalSettings,
                          log: Callable[[str], None] = lambda m: None,
                          clock: Callable[[], float] = time.monotonic) -> Pooled:
    """Call ``measure(rounds)`` (baseline and final, interleaved) until the latency budget is decided at
    ``s.level`` or the next call would pass ``s.cap_s``; see the module doc."""
    pool = Pooled()
    t0 = clock()
    lat = latency_budgets(budgets)
    need = rounds_for(s.level)
    if lat.has_latency:
        log(f"verdict: at least {need} measuring processes of {s.rounds} rounds (a {100 * s.level:g}% interval "
            f"needs {need}), more until it decides or {s.cap_s:g} s")
    while True:
        t_call = clock()
        pool.add(measure(s.rounds))
        spent = clock() - t0
        per_call = clock() - t_call
        obs = Observed(pool.records[1]["latency_ms"]["median"], None, pool.speedup,
                       intervals=pool.intervals(s.level), level=s.level)
        v = verdict(lat, obs)
        if not v.undecided or not lat.has_latency:
            break
        if spent + per_call > s.cap_s:
            log(f"verdict cap {s.cap_s:g} s reached after {pool.calls} measuring processes: {v.undecided[0]}")
            break
        if pool.calls >= need:
            log(f"{pool.calls} measuring processes: {v.undecided[0]}; one more")
    pool.seconds = clock() - t0
    return pool
