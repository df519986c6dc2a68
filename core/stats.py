"""Intervals for the verdict: a measured speedup or latency is an estimate, not a number. Pure Python.

- :func:`median_interval`: the distribution-free confidence interval of a **median** from order
  statistics (the sign-test interval): with ``n`` values the interval ``[x_(k), x_(n+1-k)]``
  covers the population median with probability ``1 - 2 * P(Binomial(n, 1/2) < k)``. It fits the
  pipeline's definition of a speedup (the median of per-round ratios) without assuming a
  distribution, and per-round ratios on a shared machine are not normal (a burst of outside load
  makes one round an outlier). The largest ``k`` whose coverage is at least ``level`` is taken;
  with fewer than 6 values no interval reaches 95% (5 values give 93.75% at best), so the
  coverage achieved is returned with the bounds.
- :func:`wilson_interval`: the Wilson score interval of a proportion (top-1 on a finite test
  split).
- :func:`decide`: where an interval lies against a budget: ``met``, ``not_met`` or ``undecided``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval; ``level`` is the coverage achieved (may be below the one asked)."""

    estimate: float
    low: float
    high: float
    level: float
    n: int
    method: str

    def to_json(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _binom_cdf_below(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) < k)."""
    return sum(math.comb(n, i) for i in range(k)) / 2 ** n


def median_interval(xs: Sequence[float], level: float = LEVEL) -> Interval:
    """Order-statistic confidence interval of the median of ``xs`` (see the module doc)."""
    v = sorted(float(x) for x in xs)
    n = len(v)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0.0, 0, "order statistics")
    mid = (v[(n - 1) // 2] + v[n // 2]) / 2
    best_k, best_cov = 1, 1 - 2 * _binom_cdf_below(1, n)
    for k in range(2, n // 2 + 1):
        cov = 1 - 2 * _binom_cdf_below(k, n)
        if cov < level:
            break
        best_k, best_cov = k, cov
    return Interval(mid, v[best_k - 1], v[n - best_k], best_cov, n, "order statistics (sign test)")


def rounds_for(level: float = LEVEL) -> int:
    """The fewest values whose widest median interval ``[min, max]`` reaches ``level`` (6 for 95%)."""
    n = 1
    while 1 - 2 * _binom_cdf_below(1, n) < level:
        n += 1
    return n


def wilson_interval(correct: float, n: int, level: float = LEVEL) -> Interval:
    """Wilson score interval of the proportion ``correct / n``, in % (the way top-1 is reported)."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0.0, 0, "wilson")
    z = _z(level)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(100 * p, 100 * max(0.0, centre - half), 100 * min(1.0, centre + half), level, n, "wilson")


def _z(level: float) -> float:
    """The two-sided normal quantile for ``level`` (bisection on erf: no scipy on a device)."""
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2)) < level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def decide(iv: Interval, budget: float, at_least: bool) -> str:
    """``met`` when the whole interval is on the budget's good side, ``not_met`` when it is wholly on the bad
    side, else ``undecided``. ``at_least``: the quantity must be >= the budget (a speedup), else <= (a latency)."""
    if math.isnan(iv.low) or math.isnan(iv.high):
        return "undecided"
    good_low, good_high = (iv.low >= budget, iv.high < budget) if at_least else (iv.high <= budget, iv.low > budget)
    if good_low:
        return "met"
    if good_high:
        return "not_met"
    return "undecided"
