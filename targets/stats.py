"""Latency statistics, shared by every target (pure Python, no runtime imports)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values, q in [0, 100]."""
    if not sorted_xs:
        return math.nan
    k = (len(sorted_xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """median / p90 / p99 / mean / std / cv (cv = std / mean, as a fraction) of per-call latencies."""
    xs = sorted(samples_ms)
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {
        "median": percentile(xs, 50),
        "p90": percentile(xs, 90),
        "p99": percentile(xs, 99),
        "mean": mean,
        "std": std,
        "cv": std / mean if mean > 0 else 0.0,
        "n": len(xs),
    }
