"""Measurement records: what a target measured (:class:`TimingRecord`) and the report's ``M``
(:class:`Measurement`). Pure Python.

Both are frozen dataclasses serialised with ``to_json()`` into exactly the keys of the contract
(``DESIGN.md``: report.json's ``baseline`` / ``final``; ``pipeline measure --json``). A
:class:`TimingRecord` is also a read-only mapping over those keys, so ``rec["latency_ms"]["median"]``
works for scripts that read records as the dicts they were before.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LATENCY_KEYS = ("median", "p90", "p99", "mean", "std", "cv")


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values, q in [0, 100]."""
    if not sorted_xs:
        return math.nan
    k = (len(sorted_xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """median / p90 / p99 / mean / std / cv (cv = std / mean, as a fraction) and n of per-call latencies."""
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


@dataclass(frozen=True)
class TimingRecord(Mapping):
    """One engine's measurement on a target (``Target.measure`` returns one per engine).

    ``ratio_to_first`` is the speedup over the first engine measured with it: the median over
    interleaved rounds of (first engine's round median / this engine's round median).
    ``extra`` holds what only some targets know (``latency_source``, ``cuda_memory``, ``device``,
    ``tegrastats``, ...); it is flattened into the JSON after the common keys.
    """

    latency_ms: Mapping[str, float | None]
    iterations: int | None
    round_medians_ms: Sequence[float]
    ratio_to_first: float | None
    throughput: float | None
    memory_mb: float | None
    batch: int
    rounds: int
    engine_bytes: int | None
    measured_on: str
    threads: int | None = None
    peak_rss_mb: float | None = None
    empty_rss_mb: float | None = None
    session_create_s: float | None = None
    first_run_ms: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        common = {
            "latency_ms": dict(self.latency_ms), "iterations": self.iterations,
            "round_medians_ms": list(self.round_medians_ms), "ratio_to_first": self.ratio_to_first,
            "throughput": self.throughput, "peak_rss_mb": self.peak_rss_mb, "empty_rss_mb": self.empty_rss_mb,
            "memory_mb": self.memory_mb, "session_create_s": self.session_create_s,
            "first_run_ms": self.first_run_ms, "batch": self.batch, "threads": self.threads, "rounds": self.rounds,
            "engine_bytes": self.engine_bytes, "measured_on": self.measured_on,
        }
        return {**common, **{k: v for k, v in self.extra.items() if k not in common}}

    def with_extra(self, **extra: Any) -> TimingRecord:
        """A copy with ``extra`` keys added (common fields given by name replace the field)."""
        names = {f.name for f in dataclasses.fields(self)} - {"extra"}
        fields_ = {k: v for k, v in extra.items() if k in names}
        rest = {k: v for k, v in extra.items() if k not in names}
        return dataclasses.replace(self, **fields_, extra={**self.extra, **rest})

    # read-only mapping over the JSON keys
    def __getitem__(self, key: str) -> Any:
        if key in _TIMING_FIELDS:
            value = getattr(self, key)
            return dict(value) if key == "latency_ms" else list(value) if key == "round_medians_ms" else value
        return self.extra[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


_TIMING_FIELDS = frozenset(f.name for f in dataclasses.fields(TimingRecord)) - {"extra"}


@dataclass(frozen=True)
class Measurement:
    """``M`` of report.json: a target's timing record plus what the model is and computes.

    ``details`` keeps every key of the timing record that is not one of ``M``'s own.
    """

    latency_ms: Mapping[str, float | None]
    throughput: float | None
    memory_mb: float | None
    onnx_bytes: int | None
    engine_bytes: int | None
    params: int | None
    macs: int | None
    accuracy: float | None
    accuracy_metric: str | None
    measured_on: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_timing(cls, timing: Mapping[str, Any], *, onnx_bytes: int | None, params: int | None,
                    macs: int | None, accuracy: float | None, metric: str | None) -> Measurement:
        t = timing.to_json() if isinstance(timing, TimingRecord) else dict(timing)
        own = {"latency_ms", "throughput", "memory_mb", "onnx_bytes", "engine_bytes", "params", "macs", "accuracy",
               "accuracy_metric", "measured_on"}
        return cls(t["latency_ms"], t.get("throughput"), t.get("memory_mb"), onnx_bytes, t.get("engine_bytes"),
                   params, macs, accuracy, metric, t.get("measured_on", ""),
                   {k: v for k, v in t.items() if k not in own})

    def to_json(self) -> dict[str, Any]:
        return {"latency_ms": dict(self.latency_ms), "throughput": self.throughput, "memory_mb": self.memory_mb,
                "onnx_bytes": self.onnx_bytes, "engine_bytes": self.engine_bytes, "params": self.params,
                "macs": self.macs, "accuracy": self.accuracy, "accuracy_metric": self.accuracy_metric,
                "measured_on": self.measured_on, "details": dict(self.details)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Measurement:
        return cls(d["latency_ms"], d.get("throughput"), d.get("memory_mb"), d.get("onnx_bytes"),
                   d.get("engine_bytes"), d.get("params"), d.get("macs"), d.get("accuracy"),
                   d.get("accuracy_metric"), d.get("measured_on", ""), d.get("details", {}))

    @property
    def median_ms(self) -> float | None:
        return self.latency_ms.get("median")
