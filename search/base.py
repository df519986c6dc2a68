"""What every search shares: the candidate, the evaluator interface, limits, and the search frame.

A search decides *how much* to prune. Which channels go is the criterion's business, and what a
candidate costs is the target's; both arrive through the :class:`Evaluator` callbacks, so the
search logic is testable with a deterministic cost model. :func:`run_search` is the frame every
search body runs in: the candidate and time caps, the evaluation cache, logging, the feasibility
flags and the result. Budgets and the verdict are :mod:`search.budget`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from search.budget import Budgets


@dataclass
class Candidate:
    ratio: float
    key: tuple  # per-group widths; candidates with the same key are the same architecture
    latency_ms: float
    memory_mb: float
    accuracy_oneshot: float | None
    macs: int
    params: int
    speedup: float | None = None  # vs the unpruned model, measured interleaved in one process
    accuracy: float | None = None  # after short recovery when recovered, else one-shot
    recovered: bool = False
    feasible: bool = False  # resource budgets met
    accepted: bool = False
    policy: dict | None = None  # how the report describes it; default: a global ratio
    payload: Any = field(default=None, repr=False)  # evaluator-private (the plan)

    def to_json(self) -> dict:
        return {
            "policy": self.policy or {"kind": "global", "prune_ratio": round(self.ratio, 4)},
            "prune_ratio": round(self.ratio, 4),
            "latency_ms": self.latency_ms, "speedup": self.speedup, "memory_mb": self.memory_mb, "macs": self.macs,
            "params": self.params, "accuracy": self.accuracy, "accuracy_oneshot": self.accuracy_oneshot,
            "recovered": self.recovered, "feasible": self.feasible, "accepted": self.accepted,
        }


class Evaluator(Protocol):
    def measure(self, ratio: float) -> Candidate:
        """Prune at ``ratio`` (one shot + BN re-estimation), export, measure; accuracy on calib."""

    def recover(self, cand: Candidate) -> float:
        """Short recovery of ``cand``; returns its calibration accuracy."""


@dataclass(frozen=True)
class SearchLimits:
    max_ratio: float = 0.9
    step: float = 0.2
    min_step: float = 0.02
    max_candidates: int = 16
    time_limit_s: float = 600.0
    latency_margin: float = 0.05


@dataclass
class TuneResult:
    chosen: Candidate | None
    candidates: list[Candidate]
    stop_reason: str
    log: list[str]


def time_cap_reason(spent: float, done: int, cap: float, what: str = "candidate") -> str | None:
    """Why no further evaluation may start: the time cap reached, or passed by the next one if it takes as long
    as the ``done`` ones so far took on average. Every search's cap (and ``pipeline worker``'s) reads this."""
    if spent >= cap:
        return f"time cap ({cap:.0f}s) reached"
    if done and spent * (done + 1) / done > cap:
        return f"time cap ({cap:.0f}s): {spent:.0f}s spent, the next {what} would end past it (~{spent / done:.0f}s each)"
    return None


class Budgeted:
    """Evaluation cache with an iteration and time cap."""

    def __init__(self, ev: Evaluator, limits: SearchLimits, log: Callable[[str], None],
                 clock: Callable[[], float], on_measure: Callable[[Budgeted], None] | None = None) -> None:
        self.ev, self.limits, self.log, self.clock = ev, limits, log, clock
        self.on_measure = on_measure  # after every evaluation (progress bars)
        self.start = clock()
        self.by_key: dict[tuple, Candidate] = {}
        self.order: list[Candidate] = []
        self.evaluations = 0

    def exhausted(self) -> str | None:
        """Why no further candidate may start: the candidate cap, or the time cap, reached or passed by the
        next candidate if it takes as long as the ones so far took on average (recoveries included)."""
        if self.evaluations >= self.limits.max_candidates:
            return f"candidate cap ({self.limits.max_candidates}) reached"
        return time_cap_reason(self.elapsed(), self.evaluations, self.limits.time_limit_s)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def per_candidate(self) -> float:
        """Mean seconds per evaluation so far (0 before the first)."""
        return self.elapsed() / self.evaluations if self.evaluations else 0.0

    def eta(self) -> float:
        """Seconds left at most: the candidates left at the mean pace, bounded by the time cap."""
        left = (self.limits.max_candidates - self.evaluations) * self.per_candidate()
        return max(0.0, min(left, self.limits.time_limit_s - self.elapsed()))

    def measure(self, ratio: float) -> Candidate:
        self.evaluations += 1
        return self._track(self.ev.measure(ratio), f"ratio {ratio:.3f}")

    def measure_policy(self, keep_ratios: dict[str, float], policy: dict, label: str) -> Candidate:
        self.evaluations += 1
        return self._track(self.ev.measure_policy(keep_ratios, policy), label)

    def _track(self, c: Candidate, label: str) -> Candidate:
        same = self.by_key.get(c.key)
        if same is not None:  # same widths as an earlier candidate: same architecture, keep the first
            self.log(f"{label}: same widths as ratio {same.ratio:.3f}")
            c = same
        else:
            self.by_key[c.key] = c
            self.order.append(c)
            self.log(f"{label}: {c.latency_ms:.3f} ms, {c.memory_mb:.1f} MB, one-shot acc {_fmt(c.accuracy_oneshot)}")
        if self.on_measure is not None:
            self.on_measure(self)
        return c

    def confirm(self, c: Candidate) -> Candidate:
        """Re-measure a candidate that looks feasible (more rounds); a lucky first measurement is common."""
        fn = getattr(self.ev, "confirm", None)
        if fn is None or c.payload is None or (isinstance(c.payload, dict) and c.payload.get("confirmed")):
            return c
        before = c.latency_ms
        fn(c)
        self.log(f"ratio {c.ratio:.3f}: confirmed {c.latency_ms:.3f} ms (first measurement {before:.3f} ms)")
        return c

    def recover(self, c: Candidate) -> float | None:
        if not c.recovered:
            c.accuracy = self.ev.recover(c)
            c.recovered = True
            self.log(f"ratio {c.ratio:.3f}: recovered acc {_fmt(c.accuracy)}")
        return c.accuracy


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def best_line(cands: list[Candidate], budgets: Budgets, margin: float = 0.0) -> str:
    """The current best candidate in a few words (progress bars): the most accurate *feasible* one (resource
    budgets and the accuracy floor met), else the most accurate one within the resource budgets (below the
    floor), else the cheapest one."""
    if not cands:
        return "-"
    ok = [c for c in cands if budgets.resources_met(c, margin)]

    def acc(c: Candidate) -> float | None:
        return c.accuracy if c.recovered else c.accuracy_oneshot

    def key(c: Candidate) -> tuple:
        a = acc(c)
        return (-1.0 if a is None else float(a), -c.latency_ms)

    feasible = [c for c in ok if budgets.accuracy_met(acc(c))]
    if feasible:
        c = max(feasible, key=key)
        return f"best feasible {c.latency_ms:.3f} ms, acc {_fmt(acc(c))}"
    if ok:
        c = max(ok, key=key)
        return f"none feasible; in budget {c.latency_ms:.3f} ms, acc {_fmt(acc(c))} (below the floor)"
    c = min(cands, key=lambda c: (c.latency_ms, c.memory_mb))
    return f"none feasible; closest {c.latency_ms:.3f} ms (over budget)"


def run_search(ev: Evaluator, budgets: Budgets, limits: SearchLimits,
               body: Callable[[Budgeted], tuple[Candidate | None, str]],
               log: Callable[[str], None], clock: Callable[[], float], *,
               progress: Callable[[int, int, str], None] | None = None) -> TuneResult:
    """Shared frame of every search: caps, logging, feasibility flags and the result.

    ``progress`` (optional) is called after every evaluation with (evaluations, candidate cap,
    the current best in words); the search code itself never prints.
    """
    lines: list[str] = []

    def say(s: str) -> None:
        lines.append(s)
        log(s)

    def tick(bb: Budgeted) -> None:
        if progress is not None:
            progress(bb.evaluations, limits.max_candidates,
                     f"{best_line(bb.order, budgets, limits.latency_margin)} | {bb.elapsed():.0f}/"
                     f"{limits.time_limit_s:.0f}s, ETA {bb.eta():.0f}s")

    b = Budgeted(ev, limits, say, clock, tick if progress is not None else None)
    chosen, reason = body(b)
    for c in b.order:
        c.feasible = budgets.resources_met(c)
        if c.accuracy is None:
            c.accuracy = c.accuracy_oneshot
    if chosen is not None:
        chosen.accepted = True
    say(f"stop: {reason}")
    return TuneResult(chosen, b.order, reason, lines)
