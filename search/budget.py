"""The user's budget and the one verdict on it, used by every search and by the report.

:class:`Budgets` keeps each budget **in the unit the user gave it**: a ``--speedup`` stays a
speedup and is compared with the candidate's *measured* speedup (the median of per-round ratios
to the unpruned model timed in the same process), never converted to milliseconds and back. An
absolute ``--latency-ms`` is compared with the candidate's latency in ms. Memory is in MB, the
accuracy floor in points of the evaluation metric.

Three views of one comparison:

- :meth:`Budgets.resources_met` / :meth:`Budgets.accuracy_met`: met or not (the searches);
- :meth:`Budgets.slack`: the relative violation of each resource budget, ``<= 0`` when met
  (Optuna's constraints; the verdict);
- :func:`verdict`: every budget checked against a final measurement, with a sentence per
  violation saying by how much (report.json's ``constraints``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from core.stats import LEVEL, Interval, decide

ACC_EPS = 1e-9  # an accuracy drop equal to the allowed drop (up to rounding) keeps the floor


class Measured(Protocol):
    """What a budget is checked against: a search candidate or a final measurement."""

    latency_ms: float
    memory_mb: float | None
    speedup: float | None


@dataclass(frozen=True)
class Budgets:
    """The run's budgets; ``None`` means "no such budget".

    Positional order (latency_ms, memory_mb, max_accuracy_drop, baseline_accuracy) is the one
    Optuna studies and older callers stored; ``speedup`` is keyword-only in practice.

    Attributes:
        latency_ms: Absolute latency budget (median, ms).
        memory_mb: Memory budget (MB).
        max_accuracy_drop: Points of the metric the run may lose.
        baseline_accuracy: The unpruned model's accuracy the floor is measured from.
        speedup: Latency budget as a speedup over the unpruned model (as the user gave it).
    """

    latency_ms: float | None
    memory_mb: float | None
    max_accuracy_drop: float | None
    baseline_accuracy: float | None
    speedup: float | None = None

    # -- resources
    def resources_met(self, m: Measured, margin: float = 0.0) -> bool:
        """Every resource budget met, latency with ``margin`` (a fraction) to spare."""
        ok = True
        if self.speedup is not None:
            ok &= m.speedup is not None and m.speedup * (1 - margin) >= self.speedup
        elif self.latency_ms is not None:
            ok &= m.latency_ms <= self.latency_ms * (1 - margin)
        if self.memory_mb is not None:
            ok &= m.memory_mb is not None and m.memory_mb <= self.memory_mb
        return bool(ok)

    def slack(self, m: Measured, margin: float = 0.0) -> dict[str, float]:
        """Relative violation of each resource budget (``<= 0``: met): ``latency`` and ``memory``.

        A speedup budget gives ``S / (s (1 - margin)) - 1`` for a measured speedup ``s``, an absolute
        one ``latency / (budget (1 - margin)) - 1``: the same number for the same point, so budgets
        in different units add up. A candidate without a measured speedup misses a speedup budget.
        """
        out: dict[str, float] = {}
        if self.speedup is not None:
            out["latency"] = math.inf if not m.speedup else self.speedup / (m.speedup * (1 - margin)) - 1.0
        elif self.latency_ms is not None:
            out["latency"] = m.latency_ms / (self.latency_ms * (1 - margin)) - 1.0
        if self.memory_mb is not None:
            out["memory"] = math.inf if m.memory_mb is None else m.memory_mb / self.memory_mb - 1.0
        return out

    def latency_limit_ms(self, baseline_ms: float) -> float | None:
        """The latency budget in ms for searches that price cuts in ms (greedy's LUT), given the
        baseline they measure against; ``None`` without a latency budget."""
        if self.speedup is not None:
            return baseline_ms / self.speedup
        return self.latency_ms

    @property
    def has_latency(self) -> bool:
        return self.speedup is not None or self.latency_ms is not None

    # -- accuracy
    def accuracy_met(self, acc: float | None) -> bool:
        if self.max_accuracy_drop is None or self.baseline_accuracy is None or acc is None:
            return True
        return self.baseline_accuracy - acc <= self.max_accuracy_drop + ACC_EPS

    def accuracy_slack(self, acc: float | None) -> float | None:
        """Relative violation of the floor, ``(drop - allowed) / max(allowed, 1)`` (``<= 0``: kept)."""
        if self.max_accuracy_drop is None or self.baseline_accuracy is None or acc is None:
            return None
        return (self.baseline_accuracy - acc - self.max_accuracy_drop) / max(self.max_accuracy_drop, 1.0)

    # -- storage
    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Budgets:
        """Read :meth:`to_json` output, including the four-key form studies stored before ``speedup``."""
        return cls(d.get("latency_ms"), d.get("memory_mb"), d.get("max_accuracy_drop"), d.get("baseline_accuracy"),
                   d.get("speedup"))


@dataclass(frozen=True)
class Observed:
    """A final measurement as a budget sees it (the report's view of ``M``)."""

    latency_ms: float
    memory_mb: float | None
    speedup: float | None
    accuracy: float | None = None
    metric: str = "accuracy"
    unit: str = "%"  # the metric's unit (stages.evaluate); the floor is in it
    # confidence intervals of the final measurement (core.stats): "speedup" (of the median per-round
    # ratio), "latency_ms" (of the final model's median round latency); absent: point estimates decide
    intervals: Mapping[str, Interval] = field(default_factory=dict)
    level: float = LEVEL  # the coverage an interval needs before it may decide


@dataclass(frozen=True)
class Verdict:
    """Whether every budget holds, and a sentence per one that does not.

    ``status`` is ``met``, ``not_met`` or ``inconclusive``: a latency budget whose interval still
    straddles it (or whose interval has not reached the required coverage) is *undecided*; the run
    is inconclusive when something is undecided and nothing is decisively violated. ``undecided``
    names those budgets, with their interval.
    """

    met: bool
    violations: list[str] = field(default_factory=list)
    status: str = "met"
    undecided: list[str] = field(default_factory=list)


def verdict(budgets: Budgets, m: Observed, *, baseline_ms: float | None = None) -> Verdict:
    """Check every budget against ``m`` (no margin: this is the final word).

    ``baseline_ms`` (the unpruned model's median) only completes the speedup sentence.
    """
    v: list[str] = []
    undecided = _undecided_latency(budgets, m)
    slack = budgets.slack(m)
    if undecided:
        pass  # the interval straddles the budget: neither met nor violated
    elif budgets.speedup is not None and slack.get("latency", 0.0) > 0:
        sp = m.speedup or 0.0
        base = f"baseline {baseline_ms:.3f} ms, " if baseline_ms is not None else ""
        v.append(f"speedup {sp:.2f}x < required {budgets.speedup:.2f}x (short by "
                 f"{100 * (1 - sp / budgets.speedup):.1f}%; {base}final {m.latency_ms:.3f} ms)")
    elif budgets.latency_ms is not None and slack.get("latency", 0.0) > 0:
        v.append(f"latency {m.latency_ms:.3f} ms > budget {budgets.latency_ms:.3f} ms (over by "
                 f"{m.latency_ms - budgets.latency_ms:.3f} ms, {100 * (m.latency_ms / budgets.latency_ms - 1):.1f}%)")
    if budgets.memory_mb is not None and slack.get("memory", 0.0) > 0:
        mem = math.nan if m.memory_mb is None else m.memory_mb
        v.append(f"memory {mem:.1f} MB > budget {budgets.memory_mb:.1f} MB "
                 f"(over by {mem - budgets.memory_mb:.1f} MB)")
    if not budgets.accuracy_met(m.accuracy):
        assert budgets.baseline_accuracy is not None and m.accuracy is not None
        drop = budgets.baseline_accuracy - m.accuracy
        if m.unit == "%":
            v.append(f"{m.metric} drop {drop:.2f} pts > allowed {budgets.max_accuracy_drop:.2f} pts "
                     f"({budgets.baseline_accuracy:.2f}% -> {m.accuracy:.2f}%)")
        elif m.unit.startswith("-"):  # a lower-is-better quantity scored negated (fid-digits: -FD)
            v.append(f"{m.metric}: {m.unit[1:].split(' ')[0]} rose by {drop:.2f} > allowed "
                     f"{budgets.max_accuracy_drop:.2f} ({-budgets.baseline_accuracy:.3f} -> {-m.accuracy:.3f})")
        else:
            v.append(f"{m.metric} drop {drop:.2f} > allowed {budgets.max_accuracy_drop:.2f} "
                     f"({budgets.baseline_accuracy:.2f} -> {m.accuracy:.2f}, in {m.unit})")
    status = "not_met" if v else ("inconclusive" if undecided else "met")
    return Verdict(status == "met", v, status, undecided)


def _undecided_latency(budgets: Budgets, m: Observed) -> list[str]:
    """The latency budget, when its interval does not decide it (see :class:`Verdict`)."""
    if budgets.speedup is not None and "speedup" in m.intervals:
        iv, budget, at_least, what = m.intervals["speedup"], budgets.speedup, True, "speedup"
    elif budgets.speedup is None and budgets.latency_ms is not None and "latency_ms" in m.intervals:
        iv, budget, at_least, what = m.intervals["latency_ms"], budgets.latency_ms, False, "latency"
    else:
        return []
    if iv.level >= m.level - 1e-9 and decide(iv, budget, at_least) != "undecided":
        return []
    unit = "x" if at_least else " ms"
    return [f"{what} {iv.estimate:.3f}{unit}, {100 * iv.level:.1f}% interval [{iv.low:.3f}, {iv.high:.3f}]{unit} "
            f"({iv.n} measuring processes) against the budget {budget:.3f}{unit}: not decided"]
