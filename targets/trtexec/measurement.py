"""The pipeline's measurement record M from a parsed ``trtexec`` log or ``--exportTimes`` trace.

:func:`to_measurement` first reads its input into a :class:`_Reading` (latency series,
throughput, version, device, sizes, and where each came from), then derives the spread
(``std`` / ``cv``), ``memory_mb`` and ``measured_on`` from it, optionally helped by a
tegrastats summary. Only the Python standard library is used here; the tegrastats parser is
imported lazily, and only when raw tegrastats text or samples are passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from targets.trtexec.records import MIB, Stats, TimesSummary, TrtexecResult, TrtexecRun

__all__ = ["to_measurement"]

_LATENCY_NOTES = {
    "gpu_compute": "latency_ms from 'GPU Compute Time' (primary: excludes H2D/D2H and host overhead)",
    "latency": "latency_ms from host 'Latency' (no GPU Compute Time printed)",
    "end_to_end": "latency_ms from 'End-to-End Host Latency'",
}


@dataclass
class _Reading:
    """What :func:`to_measurement` takes from its input, before any derivation."""

    run: TrtexecRun | None
    lat: Stats | None
    lat_name: str | None
    throughput: float | None = None
    trt_version: str | None = None
    device: str | None = None
    engine_bytes: int | None = None
    mem_bytes: int | None = None
    mem_source: str | None = None
    source: str = "trtexec-log"
    notes: list[str] = field(default_factory=list)


def _tegra_summary(tegrastats: Any) -> dict | None:
    """Normalise the ``tegrastats`` argument of :func:`to_measurement`.

    Args:
        tegrastats: ``None``, a :func:`targets.tegrastats.summarize` dict, raw text or bytes,
            or an iterable of samples.

    Returns:
        The summary dict, or ``None`` when no tegrastats was given.
    """
    if tegrastats is None:
        return None
    if isinstance(tegrastats, dict):
        return tegrastats
    from targets.tegrastats import parse_tegrastats, summarize  # local import: keep modules independent

    if isinstance(tegrastats, (str, bytes)):
        samples = parse_tegrastats(tegrastats)
    else:
        samples = list(tegrastats)
    return summarize(samples)


def _read_times(result: TimesSummary) -> _Reading:
    """Reading of an ``--exportTimes`` summary: latency is ``computeMs``, nothing else is known."""
    reading = _Reading(run=None, lat=result.compute, lat_name="compute", source="trtexec-times-json")
    reading.notes.append(f"latency_ms from computeMs of {result.n} exported inferences")
    reading.notes.extend(result.notes)
    return reading


def _read_run(result: Any) -> _Reading:
    """Reading of a parsed log (its last run) or of one run.

    Raises:
        TypeError: ``result`` is neither a :class:`TrtexecResult` nor a :class:`TrtexecRun`.
    """
    notes: list[str] = []
    if isinstance(result, TrtexecResult):
        run = result.last
        if result.n_runs > 1:
            notes.append(f"{result.n_runs} runs in the log; the last run is used")
    elif isinstance(result, TrtexecRun):
        run = result
    else:
        raise TypeError(
            "to_measurement expects a TrtexecResult, TrtexecRun or TimesSummary, "
            f"got {type(result).__name__}"
        )
    lat_name = run.primary_latency_name
    if lat_name in _LATENCY_NOTES:
        notes.append(_LATENCY_NOTES[lat_name])
    notes.extend(run.notes)
    return _Reading(
        run=run,
        lat=run.primary_latency,
        lat_name=lat_name,
        throughput=run.throughput_qps,
        trt_version=run.trt_version,
        device=run.device_name,
        engine_bytes=run.engine_bytes,
        mem_bytes=run.device_memory_bytes,
        mem_source=run.device_memory_source,
        notes=notes,
    )


def _spread(reading: _Reading) -> tuple[float | None, float | None]:
    """``(std, cv)`` of the latency; trtexec's CoV warning overrides cv for GPU Compute Time."""
    lat, run = reading.lat, reading.run
    cv = lat.cv if lat is not None else None
    std = lat.std if lat is not None else None
    if run is not None and lat is not None and reading.lat_name == "gpu_compute" and run.cov_percent:
        cv = run.cov_percent / 100.0
        if lat.mean is not None:
            std = cv * lat.mean
        reading.notes.append("cv from trtexec's coefficient-of-variance warning; std = cv * mean")
    return std, cv


def _memory_mb(reading: _Reading, tsum: dict | None) -> float | None:
    """Device memory in MiB: trtexec's own figure, else tegrastats RAM growth, else ``None``."""
    if reading.mem_bytes is not None:
        reading.notes.append(f"memory_mb from trtexec device memory size ({reading.mem_source})")
        return reading.mem_bytes / MIB
    if tsum is not None and tsum.get("ram_growth_mb") is not None:
        reading.notes.append("memory_mb from tegrastats: peak RAM used minus first sample (unified memory)")
        return float(tsum["ram_growth_mb"])
    return None


def _measured_on(reading: _Reading, tsum: dict | None) -> str:
    """``"trtexec <version> on <device>"``, the device guessed from tegrastats if the log has none."""
    device = reading.device
    if not device and tsum is not None and tsum.get("module_guess"):
        device = f"{tsum['module_guess']} (guessed from tegrastats)"
    return f"trtexec {reading.trt_version or '(version unknown)'} on {device or 'unknown device'}"


def to_measurement(result: Any, tegrastats: Any = None) -> dict:
    """Build the pipeline's measurement record M from a parsed trtexec log.

    Args:
        result: A :class:`TrtexecResult` (its last run is used), a :class:`TrtexecRun`, or a
            :class:`TimesSummary`.
        tegrastats: The dict from :func:`targets.tegrastats.summarize`, a list of samples or
            raw tegrastats text; it is used for ``memory_mb`` (peak RAM minus first sample)
            when the log prints no device memory size, and for the device name when the log
            has none.

    Returns:
        The record M: ``latency_ms`` {median, p90, p99, mean, std, cv}, ``throughput``,
        ``memory_mb``, ``engine_bytes``, ``measured_on``, ``source``, ``trt_version``,
        ``notes``, and the keys trtexec cannot know (``onnx_bytes``, ``params``, ...) as ``None``.

    Raises:
        TypeError: ``result`` is of another type.
    """
    tsum = _tegra_summary(tegrastats)
    reading = _read_times(result) if isinstance(result, TimesSummary) else _read_run(result)
    lat = reading.lat
    std, cv = _spread(reading)
    memory_mb = _memory_mb(reading, tsum)
    return {
        "latency_ms": {
            "median": lat.median if lat else None,
            "p90": lat.p90 if lat else None,
            "p99": lat.p99 if lat else None,
            "mean": lat.mean if lat else None,
            "std": std,
            "cv": cv,
        },
        "throughput": reading.throughput,
        "memory_mb": memory_mb,
        "onnx_bytes": None,
        "engine_bytes": reading.engine_bytes,
        "params": None,
        "macs": None,
        "accuracy": None,
        "accuracy_metric": None,
        "measured_on": _measured_on(reading, tsum),
        "source": reading.source,
        "trt_version": reading.trt_version,
        "notes": reading.notes,
    }
