"""Parsers for ``trtexec``'s JSON exports: ``--exportTimes`` traces and ``--exportProfile`` tables.

``--exportTimes`` writes one record per inference (``latencyMs``, ``computeMs``, and
``h2dMs`` / ``d2hMs`` / ``startEnqMs`` / ``endEnqMs`` where available); it is summarised
into :class:`~targets.trtexec.records.TimesSummary` with the sample standard deviation and
nearest-rank percentiles. ``--exportProfile`` writes ``[{"count": N}, {name, timeMs,
averageMs, medianMs, percentage}, ...]``; it becomes a
:class:`~targets.trtexec.records.ProfileSummary`. Only the Python standard library is used.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from targets.trtexec.records import (
    LayerTime,
    ProfileSummary,
    Stats,
    TimesSummary,
    TrtexecParseError,
    to_float,
)

__all__ = ["parse_trtexec_times_json", "parse_trtexec_profile_json", "load_trtexec_json"]


def _nearest_rank(sorted_vals: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least pct% of data <= it."""
    n = len(sorted_vals)
    k = max(1, math.ceil(pct / 100.0 * n))
    return sorted_vals[min(k, n) - 1]


def _series_stats(values: Iterable[float]) -> Stats:
    """Statistics of one exported series.

    Args:
        values: One value per inference, in ms.

    Returns:
        min/max/mean/median, p90/p95/p99 (nearest rank), sample std and cv.

    Raises:
        TrtexecParseError: The series is empty.
    """
    vals = sorted(float(v) for v in values)
    if not vals:
        raise TrtexecParseError("empty timing series")
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    pcts = tuple((p, _nearest_rank(vals, p)) for p in (90.0, 95.0, 99.0))
    return Stats(
        min=vals[0],
        max=vals[-1],
        mean=mean,
        median=statistics.median(vals),
        p90=pcts[0][1],
        p95=pcts[1][1],
        p99=pcts[2][1],
        std=std,
        cv=(std / mean) if mean else None,
        percentiles=pcts,
    )


def _is_times(data: Any) -> bool:
    """Whether ``data`` has the shape of an ``--exportTimes`` trace."""
    return (
        isinstance(data, list)
        and len(data) > 0
        and all(isinstance(r, dict) for r in data)
        and all("latencyMs" in r and "computeMs" in r for r in data)
    )


def _is_profile(data: Any) -> bool:
    """Whether ``data`` has the shape of an ``--exportProfile`` table."""
    if not (isinstance(data, list) and len(data) >= 2 and isinstance(data[0], dict)):
        return False
    if set(data[0].keys()) != {"count"}:
        return False
    return all(isinstance(r, dict) and "name" in r for r in data[1:])


def _optional_series(data: list[dict], key: str) -> Stats | None:
    """Statistics of ``key`` when every record has it, else ``None``."""
    return _series_stats(r[key] for r in data) if all(key in r for r in data) else None


def parse_trtexec_times_json(data: Any) -> TimesSummary:
    """Summarise a ``--exportTimes`` JSON (list of per-inference timing records).

    std is the sample standard deviation, percentiles use the nearest-rank method.

    Args:
        data: The decoded JSON.

    Returns:
        The trace's statistics.

    Raises:
        TrtexecParseError: ``data`` is not an ``--exportTimes`` trace.
    """
    if not _is_times(data):
        raise TrtexecParseError(
            "not a trtexec --exportTimes JSON: expected a non-empty list of records with "
            "'latencyMs' and 'computeMs'"
        )
    latency = _series_stats(r["latencyMs"] for r in data)
    compute = _series_stats(r["computeMs"] for r in data)
    h2d = _optional_series(data, "h2dMs")
    d2h = _optional_series(data, "d2hMs")
    enqueue = None
    if all("startEnqMs" in r and "endEnqMs" in r for r in data):
        enqueue = _series_stats(r["endEnqMs"] - r["startEnqMs"] for r in data)
    notes: list[str] = []
    transfers: bool | None = None
    if h2d is not None and d2h is not None:
        transfers = (h2d.max or 0) > 0 or (d2h.max or 0) > 0
        if not transfers:
            notes.append("h2dMs/d2hMs are all 0: data transfers were disabled (--noDataTransfers)")
    return TimesSummary(
        n=len(data),
        latency=latency,
        compute=compute,
        h2d=h2d,
        d2h=d2h,
        enqueue=enqueue,
        transfers_included=transfers,
        notes=tuple(notes),
    )


def _layer_total(layers: Sequence[LayerTime], attr: str) -> float | None:
    """Sum of one attribute over the layers that have it; ``None`` when none has it."""
    vals = [getattr(x, attr) for x in layers]
    return sum(v for v in vals if v is not None) if any(v is not None for v in vals) else None


def parse_trtexec_profile_json(data: Any) -> ProfileSummary:
    """Parse a ``--exportProfile`` JSON: ``[{"count": N}, {name, timeMs, averageMs,
    medianMs, percentage}, ...]``.

    Args:
        data: The decoded JSON.

    Returns:
        The per-layer profile (``source="json"``) with per-column totals.

    Raises:
        TrtexecParseError: ``data`` is not an ``--exportProfile`` table.
    """
    if not _is_profile(data):
        raise TrtexecParseError(
            "not a trtexec --exportProfile JSON: expected a list starting with {\"count\": N} "
            "followed by per-layer records with 'name'"
        )
    layers = tuple(
        LayerTime(
            name=str(r["name"]),
            time_ms=to_float(r.get("timeMs")),
            average_ms=to_float(r.get("averageMs")),
            median_ms=to_float(r.get("medianMs")),
            percentage=to_float(r.get("percentage")),
        )
        for r in data[1:]
    )
    count = data[0].get("count")
    return ProfileSummary(
        source="json",
        iterations=int(count) if isinstance(count, (int, float)) else None,
        layers=layers,
        total_time_ms=_layer_total(layers, "time_ms"),
        total_average_ms=_layer_total(layers, "average_ms"),
        total_median_ms=_layer_total(layers, "median_ms"),
    )


def _decode_json(path_or_obj: Any) -> Any:
    """Turn a path, JSON text or bytes into the decoded object (anything else passes through).

    Raises:
        TrtexecParseError: The file cannot be read or the text is not JSON.
    """
    obj = path_or_obj
    if isinstance(obj, (bytes, bytearray)):
        obj = bytes(obj).decode("utf-8", errors="replace")
    if isinstance(obj, Path) or (isinstance(obj, str) and obj.strip()[:1] not in ("[", "{")):
        try:
            obj = Path(obj).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise TrtexecParseError(
                f"cannot read trtexec JSON file {str(path_or_obj)!r}: {exc}"
            ) from exc
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise TrtexecParseError(f"not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    return obj


def load_trtexec_json(path_or_obj: Any) -> TimesSummary | ProfileSummary:
    """Load a trtexec JSON export and dispatch on its shape.

    Args:
        path_or_obj: A path, JSON text, bytes or an already-decoded object.

    Returns:
        ``--exportTimes`` -> :class:`TimesSummary`, ``--exportProfile`` -> :class:`ProfileSummary`.

    Raises:
        TrtexecParseError: The input cannot be read, is not JSON, or is neither export.
    """
    obj = _decode_json(path_or_obj)
    if _is_times(obj):
        return parse_trtexec_times_json(obj)
    if _is_profile(obj):
        return parse_trtexec_profile_json(obj)
    raise TrtexecParseError(
        "JSON is neither a trtexec --exportTimes trace (records with latencyMs/computeMs) nor "
        "an --exportProfile (list starting with {\"count\": N})"
    )
