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


def interleaved_records(engines, lat: dict, peaks: list[float], empty_mb: float, batch: int, threads: int,
                        rounds: int, measured_on: str) -> list[dict]:
    """One measurement record per engine from an ``ort_worker`` latency run and memory probes.

    ``ratio_to_first`` is the median over rounds of (first engine's round median / this engine's):
    the speedup, taken under the same machine conditions.
    """
    round_medians = [[latency_stats(r)["median"] for r in per] for per in lat["rounds"]]
    records = []
    for i, e in enumerate(engines):
        stats = latency_stats([x for r in lat["rounds"][i] for x in r])
        ratios = [a / b for a, b in zip(round_medians[0], round_medians[i]) if b > 0]
        wall = lat["wall_s"][i]
        records.append({
            "latency_ms": {k: stats[k] for k in ("median", "p90", "p99", "mean", "std", "cv")},
            "iterations": stats["n"],
            "round_medians_ms": round_medians[i],
            "ratio_to_first": statistics.median(ratios) if ratios else None,
            "throughput": batch * stats["n"] / wall if wall > 0 else 0.0,
            "peak_rss_mb": peaks[i],
            "empty_rss_mb": empty_mb,
            "memory_mb": max(0.0, peaks[i] - empty_mb),
            "session_create_s": lat["session_create_s"][i],
            "first_run_ms": lat["first_run_ms"][i],
            "batch": batch,
            "threads": threads,
            "rounds": rounds,
            "engine_bytes": e.engine_bytes,
            "measured_on": measured_on,
        })
    return records
