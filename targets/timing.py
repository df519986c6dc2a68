"""The one measurement protocol every target uses: a timer, interleaved rounds, and the record.

Latency on a shared machine drifts by tens of percent between processes minutes apart, while
the ratio of two models timed in one process, round by round, holds within a few percent. So
every target measures the same way:

1. **Warm-up round, discarded**: each engine runs once for ``warmup_s`` (one timed call at
   least), so clocks, caches, thread pools and allocators settle; nothing of it is kept.
2. **Interleaved rounds**: ``rounds`` times, each engine in turn (A B A B ...) warms up for
   ``warmup_s`` and is then timed call by call until both ``min_duration_s`` and ``min_iters``
   are reached (never past ``max(10 * min_duration_s, 30 s)``).
3. **The record** (:func:`timing_records`): latency statistics over all timed calls, each round's
   median, and ``ratio_to_first``, the **median over rounds of the per-round ratio** (first
   engine's round median / this engine's): the speedup, taken under the same machine conditions.

:class:`Timer` says how one call is timed: :class:`WallTimer` (``perf_counter`` around a call
that returns when its work is done: ONNX Runtime's ``run``), CUDA events on a stream (the
``cuda`` and ``tensorrt`` targets). A target whose runtime times itself (``trtexec`` on a
Jetson: one process per round and engine) passes its own ``measure_one`` to
:func:`interleave_rounds`.

This module imports only the standard library at import time: it is copied next to
``targets/ort/worker.py`` when that worker runs on a remote device.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MAX_ROUND_S = 30.0  # a round never runs longer than max(10 * min_duration_s, this)

Clock = Callable[[], float]


class RoundSettings(Protocol):
    """What the protocol reads of :class:`targets.base.MeasureSettings`."""

    warmup_s: float
    min_duration_s: float
    min_iters: int


class Timer:
    """Times one call in milliseconds. :class:`WallTimer` for host runtimes; CUDA events on a GPU."""

    def time(self, call: Callable[[], object]) -> float:
        raise NotImplementedError

    def sync(self) -> None:
        """Wait until everything launched so far has finished."""


class WallTimer(Timer):
    """``perf_counter`` around a call that returns only when its work is done (ORT's ``run``)."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self._sync = sync

    def time(self, call: Callable[[], object]) -> float:
        t = time.perf_counter()
        call()
        if self._sync is not None:
            self._sync()
        return (time.perf_counter() - t) * 1e3

    def sync(self) -> None:
        if self._sync is not None:
            self._sync()


class CudaEventTimer(Timer):
    """Two CUDA events around the call on ``stream`` (default: the current stream); waits on the second.

    ``torch`` is the torch module, passed in so that this module imports nothing at import time.
    """

    def __init__(self, torch: Any, stream: Any = None) -> None:
        self._torch, self._stream = torch, stream
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def time(self, call: Callable[[], object]) -> float:
        self._start.record(self._stream)
        call()
        self._end.record(self._stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def sync(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        else:
            self._torch.cuda.synchronize()


def time_calls(call: Callable[[], object], timer: Timer, warmup_s: float, min_s: float, min_n: int,
               clock: Clock = time.perf_counter) -> tuple[list[float], float]:
    """Warm up for ``warmup_s``, then time single calls until both ``min_s`` and ``min_n`` are reached.

    A round never runs longer than ``max(10 * min_s, 30 s)``. Returns (per-call ms, wall seconds).
    """
    end = clock() + warmup_s
    while clock() < end:
        call()
    timer.sync()
    samples: list[float] = []
    start = clock()
    cap = max(10 * min_s, MAX_ROUND_S)
    while True:
        samples.append(timer.time(call))
        now = clock()
        if (now - start >= min_s and len(samples) >= min_n) or now - start >= cap:
            return samples, now - start


@dataclass
class Prepared:
    """One engine ready to be timed: ``call`` runs it once on its fixed input."""

    call: Callable[[], object]
    setup_s: float
    first_run_ms: float
    close: Callable[[], None] = lambda: None


def interleave_rounds(n: int, rounds: int, measure_one: Callable[[int], tuple[list[float], float]],
                      warm_up: Callable[[int], object] | None = None) -> dict:
    """The interleaving rule: (optional) one discarded warm-up per engine, then ``rounds`` x engines in turn.

    ``measure_one(i)`` times engine ``i`` once and returns (per-call ms, wall seconds).
    Returns ``{"rounds": [engine][round] -> samples, "wall_s": [engine] -> seconds}``.
    """
    if warm_up is not None:
        for i in range(n):  # discarded: clocks, caches and allocators settle
            warm_up(i)
    per: list[list[list[float]]] = [[] for _ in range(n)]
    walls = [0.0] * n
    for _ in range(rounds):
        for i in range(n):
            samples, wall = measure_one(i)
            per[i].append(samples)
            walls[i] += wall
    return {"rounds": per, "wall_s": walls}


def interleave(runs: Sequence[Prepared], settings: RoundSettings, rounds: int, timer: Timer,
               clock: Clock = time.perf_counter) -> dict:
    """Time prepared engines round by round (A B A B ...) after one discarded round each.

    Returns the latency dict :func:`timing_records` reads: ``rounds``, ``wall_s``,
    ``session_create_s`` and ``first_run_ms``.
    """
    lat = interleave_rounds(
        len(runs), rounds,
        lambda i: time_calls(runs[i].call, timer, settings.warmup_s, settings.min_duration_s, settings.min_iters,
                             clock),
        lambda i: time_calls(runs[i].call, timer, settings.warmup_s, settings.warmup_s, 1, clock))
    return {**lat, "session_create_s": [r.setup_s for r in runs], "first_run_ms": [r.first_run_ms for r in runs]}


def _per(values: Sequence[Any] | Any, n: int) -> list[Any]:
    return list(values) if isinstance(values, (list, tuple)) else [values] * n


def timing_records(engines: Sequence[Any], lat: Mapping[str, Any], *, batch: int, rounds: int, measured_on: str,
                   memory_mb: Sequence[float | None] | float | None, threads: int | None = None,
                   peak_rss_mb: Sequence[float | None] | None = None, empty_rss_mb: float | None = None,
                   throughput: Sequence[float | None] | None = None,
                   extra: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None) -> list:
    """One :class:`core.records.TimingRecord` per engine from interleaved rounds: the only record builder.

    Args:
        engines: The measured engines (``engine_bytes`` is read from each).
        lat: ``rounds`` ([engine][round] -> per-call ms) and ``wall_s``, optionally
            ``session_create_s`` and ``first_run_ms`` per engine.
        batch: Samples per call (throughput = batch x calls / wall seconds unless ``throughput``).
        rounds: The number of interleaved rounds.
        measured_on: What was measured where (runtime, device), for the record.
        memory_mb: The record's ``memory_mb`` per engine (or one value for all).
        threads: Runtime threads, where the runtime has them.
        peak_rss_mb: Per engine peak RSS (the ``cpu`` target's memory probe), else ``None``.
        empty_rss_mb: RSS of a process that only imported the runtime.
        throughput: Per engine throughput the runtime reported itself (trtexec), instead of ours.
        extra: Target-specific keys, one mapping for all engines or one per engine.
    """
    from core.records import TimingRecord, latency_stats

    n = len(engines)
    round_medians = [[latency_stats(r)["median"] for r in per] for per in lat["rounds"]]
    extras = _per(extra or {}, n)
    mems, peaks = _per(memory_mb, n), _per(peak_rss_mb, n)
    created, first = _per(lat.get("session_create_s"), n), _per(lat.get("first_run_ms"), n)
    out = []
    for i, e in enumerate(engines):
        stats = latency_stats([x for r in lat["rounds"][i] for x in r])
        ratios = [a / b for a, b in zip(round_medians[0], round_medians[i]) if b > 0]
        wall = lat["wall_s"][i] if lat.get("wall_s") else 0.0
        tput = throughput[i] if throughput is not None else (batch * stats["n"] / wall if wall > 0 else 0.0)
        out.append(TimingRecord(
            latency_ms={k: stats[k] for k in ("median", "p90", "p99", "mean", "std", "cv")},
            iterations=stats["n"], round_medians_ms=round_medians[i],
            ratio_to_first=statistics.median(ratios) if ratios else None, throughput=tput, memory_mb=mems[i],
            batch=batch, rounds=rounds, engine_bytes=getattr(e, "engine_bytes", None), measured_on=measured_on,
            threads=threads, peak_rss_mb=peaks[i], empty_rss_mb=empty_rss_mb, session_create_s=created[i],
            first_run_ms=first[i], extra=dict(extras[i])))
    return out
