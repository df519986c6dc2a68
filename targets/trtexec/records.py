"""Records produced by the ``trtexec`` parsers: timing statistics, per-layer profiles, runs.

These are the types :mod:`targets.trtexec.log` returns (and re-exports), with the two
small conversions every parser shares. Only the Python standard library is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "MIB",
    "TrtexecParseError",
    "Stats",
    "LayerTime",
    "ProfileSummary",
    "TrtexecRun",
    "TrtexecResult",
    "TimesSummary",
    "to_float",
    "major_version",
]

MIB = 1024 * 1024


class TrtexecParseError(ValueError):
    """The input is not trtexec output (or not a trtexec JSON export)."""


def to_float(s: str | None) -> float | None:
    """Convert a printed number to a float.

    Args:
        s: The number as printed, or ``None``.

    Returns:
        The value, or ``None`` when ``s`` is ``None`` or not a number.
    """
    if s is None:
        return None
    try:
        return float(s)
    except ValueError:
        return None


def major_version(version: str | None) -> int | None:
    """Major number of a dotted TensorRT version.

    Args:
        version: A version such as ``"8.6.1"``, or ``None``.

    Returns:
        The major number, or ``None`` when the version is absent or malformed.
    """
    if not version:
        return None
    try:
        return int(version.split(".")[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class Stats:
    """Summary statistics of one timing series, in milliseconds.

    Fields that the source did not print are ``None`` (e.g. TRT <= 8.4 prints only
    ``percentile(99%)``, so ``p90``/``p95`` are ``None``; the console never prints a
    standard deviation). ``percentiles`` keeps every printed percentile as
    ``(percent, value)`` pairs, including non-default ones from ``--percentile``.
    ``cv`` is a fraction (std / mean), not a percentage.
    """

    min: float | None = None
    max: float | None = None
    mean: float | None = None
    median: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    std: float | None = None
    cv: float | None = None
    percentiles: tuple[tuple[float, float], ...] = ()

    def percentile(self, pct: float) -> float | None:
        """The printed value of one percentile.

        Args:
            pct: The percent, e.g. ``99.0``.

        Returns:
            The value in ms, or ``None`` when that percentile was not printed.
        """
        for p, v in self.percentiles:
            if math.isclose(p, pct):
                return v
        return None


@dataclass(frozen=True)
class LayerTime:
    """One layer of a per-layer profile (times in ms, ``percentage`` of the total)."""

    name: str
    time_ms: float | None
    average_ms: float | None
    median_ms: float | None = None
    percentage: float | None = None


@dataclass(frozen=True)
class ProfileSummary:
    """Per-layer profile, from ``--exportProfile`` JSON or a ``--dumpProfile`` table.

    ``total_average_ms`` is the per-inference sum of layer averages; ``total_median_ms``
    is the sum of per-layer medians (not the median of the per-inference total).
    """

    source: str  # "json" | "console"
    iterations: int | None
    layers: tuple[LayerTime, ...]
    total_time_ms: float | None
    total_average_ms: float | None
    total_median_ms: float | None = None


@dataclass(frozen=True)
class TrtexecRun:
    """Everything parsed from one trtexec invocation (one ``&&&& RUNNING`` block)."""

    index: int
    trt_version: str | None = None
    command: str | None = None
    status: str | None = None  # "PASSED" | "FAILED" | None (banner absent)
    summary_format: str | None = None  # "legacy-multiline" (TRT<=7) | "single-line" | None
    device_name: str | None = None
    compute_capability: str | None = None
    throughput_qps: float | None = None
    latency: Stats | None = None
    gpu_compute: Stats | None = None
    end_to_end: Stats | None = None
    enqueue: Stats | None = None
    h2d: Stats | None = None
    d2h: Stats | None = None
    total_host_walltime_s: float | None = None
    total_gpu_compute_s: float | None = None
    queries: int | None = None
    cov_percent: float | None = None
    summary_warnings: tuple[str, ...] = ()
    engine_bytes: int | None = None
    engine_size_source: str | None = None
    device_memory_bytes: int | None = None
    device_memory_source: str | None = None
    build_seconds: float | None = None
    deserialize_seconds: float | None = None
    precision: str | None = None
    precision_flags: tuple[str, ...] = ()
    input_shapes: tuple[tuple[str, str], ...] = ()
    batch: int | None = None
    implicit_batch: bool | None = None
    latency_includes_transfers: bool | None = None
    cuda_graph: bool | None = None
    spin_wait: bool | None = None
    profile: ProfileSummary | None = None
    notes: tuple[str, ...] = ()

    @property
    def has_latency(self) -> bool:
        """Whether the run printed GPU Compute Time or host Latency."""
        return self.gpu_compute is not None or self.latency is not None

    @property
    def primary_latency_name(self) -> str | None:
        """Name of the field :attr:`primary_latency` reads, or ``None``."""
        if self.gpu_compute is not None and self.gpu_compute.median is not None:
            return "gpu_compute"
        if self.latency is not None:
            return "latency"
        if self.end_to_end is not None:
            return "end_to_end"
        return None

    @property
    def primary_latency(self) -> Stats | None:
        """GPU Compute Time where printed (see docs/parsers.md), else host Latency."""
        name = self.primary_latency_name
        return getattr(self, name) if name else None

    @property
    def h2d_mean_ms(self) -> float | None:
        """Mean host-to-device transfer time, ms."""
        return self.h2d.mean if self.h2d else None

    @property
    def d2h_mean_ms(self) -> float | None:
        """Mean device-to-host transfer time, ms."""
        return self.d2h.mean if self.d2h else None

    @property
    def shapes(self) -> dict[str, str]:
        """Input shapes as ``{name: "NxCxHxW"}``."""
        return dict(self.input_shapes)

    @property
    def trt_major(self) -> int | None:
        """Major TensorRT version, or ``None`` when unknown."""
        return major_version(self.trt_version)


_RUN_FIELDS = frozenset(f.name for f in fields(TrtexecRun)) | {
    "has_latency",
    "primary_latency",
    "primary_latency_name",
    "h2d_mean_ms",
    "d2h_mean_ms",
    "shapes",
    "trt_major",
}


@dataclass(frozen=True)
class TrtexecResult:
    """All runs found in a log. Attributes of :class:`TrtexecRun` read through to
    :attr:`last` (the most recent run in the text), so ``result.throughput_qps`` is
    ``result.last.throughput_qps``; use :attr:`first` or :attr:`runs` for the others.
    """

    runs: tuple[TrtexecRun, ...]

    @property
    def first(self) -> TrtexecRun:
        """The first run in the text."""
        return self.runs[0]

    @property
    def last(self) -> TrtexecRun:
        """The last (most recent) run in the text."""
        return self.runs[-1]

    @property
    def n_runs(self) -> int:
        """How many runs the text holds."""
        return len(self.runs)

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found normally; never for "runs".
        if name in _RUN_FIELDS:
            return getattr(self.last, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")


@dataclass(frozen=True)
class TimesSummary:
    """Statistics of a ``--exportTimes`` JSON trace (one record per inference)."""

    n: int
    latency: Stats
    compute: Stats
    h2d: Stats | None
    d2h: Stats | None
    enqueue: Stats | None
    transfers_included: bool | None
    notes: tuple[str, ...] = ()
