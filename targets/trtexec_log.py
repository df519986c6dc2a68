"""Lenient parsers for TensorRT ``trtexec`` console logs and its JSON exports.

Handles the output-format drift between TensorRT releases (see docs/parsers.md):

* TRT 7.x: no version in the ``&&&&`` banner, no device block, multi-line summary
  ("Host Latency" / "min: X ms (end to end Y ms)" / "percentile: X ms at 99%" /
  "throughput: N qps" / "Enqueue Time" / "GPU Compute").
* TRT 8.0-8.3: one-line summary with ``End-to-End Host Latency`` and ``percentile(99%)``.
* TRT 8.4: no End-to-End line, still only ``percentile(99%)``; CoV warning appears.
* TRT 8.5+ / 10.x: ``percentile(90%/95%/99%)``; TRT 10 adds "Created engine with size"
  and "Created execution context with device memory size".
* ``--verbose`` logs: ``[V]`` explanation lines after the summary ("[V] Throughput: the
  observed throughput ...") are ignored; numbers come from the summary block only.
* Several runs concatenated in one text (one per ``&&&& RUNNING`` banner).
* Summary-only pastes, and logs without any summary (``--dumpProfile`` without
  ``--separateProfileRun``, ``--skipInference``): whatever is there is returned and the
  missing latency is stated in ``notes``.
* TRT 11: data transfers off and CUDA graphs on by default; recorded in
  ``latency_includes_transfers`` / ``cuda_graph`` and flagged in ``notes``.

Only the Python standard library is used.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "TrtexecParseError",
    "Stats",
    "LayerTime",
    "ProfileSummary",
    "TrtexecRun",
    "TrtexecResult",
    "TimesSummary",
    "parse_trtexec_log",
    "parse_trtexec_times_json",
    "parse_trtexec_profile_json",
    "load_trtexec_json",
    "to_measurement",
    "decode_trt_version",
]

MIB = 1024 * 1024


class TrtexecParseError(ValueError):
    """The input is not trtexec output (or not a trtexec JSON export)."""


# --------------------------------------------------------------------------- data types


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
        for p, v in self.percentiles:
            if math.isclose(p, pct):
                return v
        return None


@dataclass(frozen=True)
class LayerTime:
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
        return self.gpu_compute is not None or self.latency is not None

    @property
    def primary_latency_name(self) -> str | None:
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
        return self.h2d.mean if self.h2d else None

    @property
    def d2h_mean_ms(self) -> float | None:
        return self.d2h.mean if self.d2h else None

    @property
    def shapes(self) -> dict[str, str]:
        return dict(self.input_shapes)

    @property
    def trt_major(self) -> int | None:
        return _major(self.trt_version)


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
        return self.runs[0]

    @property
    def last(self) -> TrtexecRun:
        return self.runs[-1]

    @property
    def n_runs(self) -> int:
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


# --------------------------------------------------------------------------- helpers

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf"

# "[03/07/2022-05:12:53] [I] " prefix; both parts optional.
_PREFIX_RE = re.compile(
    r"^\s*(?:\[\d{1,2}/\d{1,2}/\d{2,4}-\d{1,2}:\d{2}:\d{2}\]\s*)?(?:\[(?P<lvl>[IWEVF])\]\s?)?"
)
_BANNER_RE = re.compile(
    r"&&&& (?P<status>RUNNING|PASSED|FAILED|WAIVED) TensorRT\.trtexec"
    r"(?:\s*\[TensorRT v(?P<ver>\d+)\])?(?:\s*\[b\d+\])?\s*(?:#\s*(?P<cmd>.*))?$"
)
_VERSION_LINE_RE = re.compile(r"^TensorRT version:\s*(?P<v>\d+(?:\.\d+)*)\s*$")
_STATS_LINE_RE = re.compile(
    r"^(?P<label>Latency|End-to-End Host Latency|Enqueue Time|H2D Latency|GPU Compute Time"
    r"|D2H Latency):\s*(?P<body>(?:min|max|mean|median|percentile)\b.*)$"
)
_STAT_ITEM_RE = re.compile(
    rf"(?P<key>min|max|mean|median|percentile\((?P<pct>[\d.]+)%\))\s*=\s*(?P<val>{_NUM})\s*ms"
)
_THROUGHPUT_RE = re.compile(rf"^Throughput:\s*(?P<v>{_NUM})\s*qps\b")
_WALLTIME_RE = re.compile(rf"^Total Host Walltime:\s*(?P<v>{_NUM})\s*s\b")
_TOTAL_GPU_RE = re.compile(rf"^Total GPU Compute Time:\s*(?P<v>{_NUM})\s*s\b")
_COV_RE = re.compile(rf"coefficient of variance\s*=\s*(?P<v>{_NUM})\s*%")
_TRACE_RE = re.compile(rf"^Timing trace has (?P<n>\d+) queries over (?P<s>{_NUM}) s")

# Legacy (TRT <= 7) multi-line summary.
_LEGACY_HEADERS = {
    "Host Latency": "latency",
    "Enqueue Time": "enqueue",
    "GPU Compute": "gpu_compute",
    "GPU Compute Time": "gpu_compute",
    "H2D Latency": "h2d",
    "D2H Latency": "d2h",
}
_LEGACY_STAT_RE = re.compile(
    rf"^(?P<key>min|max|mean|median):\s*(?P<v>{_NUM})\s*ms(?:\s*\(end to end (?P<e2e>{_NUM})\s*ms\))?$"
)
_LEGACY_PCT_RE = re.compile(
    rf"^percentile:\s*(?P<v>{_NUM})\s*ms at (?P<pct>[\d.]+)%"
    rf"(?:\s*\(end to end (?P<e2e>{_NUM})\s*ms at [\d.]+%\))?$"
)
_LEGACY_THROUGHPUT_RE = re.compile(rf"^throughput:\s*(?P<v>{_NUM})\s*qps\b")
_LEGACY_WALLTIME_RE = re.compile(rf"^walltime:\s*(?P<v>{_NUM})\s*s\b")
_LEGACY_TOTAL_RE = re.compile(rf"^total compute time:\s*(?P<v>{_NUM})\s*s\b")

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kb": 1024,
    "kib": 1024,
    "mb": MIB,  # trtexec's "MB" (TRT 8.0) is the same MiB number later printed as "MiB"
    "mib": MIB,
    "gb": 1024 * MIB,
    "gib": 1024 * MIB,
}
_CREATED_ENGINE_RE = re.compile(rf"^Created engine with size:\s*(?P<v>{_NUM})\s*(?P<u>[KMG]i?B|bytes)?")
_LOADED_ENGINE_RE = re.compile(rf"^Loaded engine size:\s*(?P<v>{_NUM})\s*(?P<u>[KMG]i?B|bytes)?")
_CTX_MEM_RE = re.compile(
    rf"^Created execution context with device memory size:\s*(?P<v>{_NUM})\s*(?P<u>[KMG]i?B|bytes)?"
)
_ACT_MEM_RE = re.compile(rf"^Total Activation Memory:\s*(?P<v>{_NUM})\s*(?P<u>[KMG]i?B|bytes)?\s*$")
_CTX_ALLOC_RE = re.compile(
    r"TensorRT-managed allocation in IExecutionContext creation:.*?GPU \+(?P<v>\d+)"
)
_VERBOSE_ALLOC_RE = re.compile(
    r"^Allocated (?:activation device|device scratch) memory of size (?P<v>\d+)"
)
_BUILT_RE = re.compile(rf"^Engine built in (?P<v>{_NUM})\s*sec")
_DESER_RE = re.compile(rf"^Engine deserialized in (?P<v>{_NUM})\s*sec")
_DEVICE_RE = re.compile(r"^Selected Device:\s*(?P<v>.+?)\s*$")
_DEVICE_LIST_RE = re.compile(r'^Device \d+:\s*"(?P<v>[^"]+)"')
_CC_RE = re.compile(r"^Compute Capability:\s*(?P<v>[\d.]+)")
_PRECISION_RE = re.compile(r"^Precision:\s*(?P<v>\S.*?)\s*$")
_BATCH_RE = re.compile(r"^Batch:\s*(?P<v>\S+)")
_SHAPE_OPT_RE = re.compile(r"^Input inference shapes?\s*:\s*(?P<v>.+?)\s*$")
_BINDING_RE = re.compile(
    r"^(?:Created input binding for (?P<a>.+?) with dimensions (?P<ad>[\dx]+)"
    r"|Input binding for (?P<b>.+?) with dimensions (?P<bd>[\dx]+)\b)"
)
_ONOFF_RE = re.compile(r"^(?P<k>Data transfers|CUDA Graph|Spin-wait):\s*(?P<v>Enabled|Disabled)\b")
_PROFILE_HDR_RE = re.compile(r"^=== Profile \((?P<n>\d+) iterations\s*\) ===")
_E2E_NOT_REPORTED = "The e2e network timing is not reported"

_PRECISION_FLAGS = ("fp16", "bf16", "int8", "fp8", "int4", "best")


def _f(s: str | None) -> float | None:
    if s is None:
        return None
    try:
        return float(s)
    except ValueError:
        return None


def _bytes(value: str, unit: str | None) -> int | None:
    v = _f(value)
    if v is None:
        return None
    return int(round(v * _SIZE_UNITS.get((unit or "").lower(), 1)))


def decode_trt_version(raw: str | int | None) -> str | None:
    """Decode a TensorRT version as printed by trtexec.

    ``"8.2.3"`` stays as is; the integer forms of the banner / ``TensorRT version:``
    line are decoded: ``8003`` -> ``"8.0.3"``, ``8502`` -> ``"8.5.2"``,
    ``101601`` -> ``"10.16.1"`` (TRT >= 10 uses major*10000 + minor*100 + patch).
    """
    if raw is None:
        return None
    s = str(raw).strip()
    if "." in s:
        return s
    if not s.isdigit():
        return None
    n = int(s)
    if n >= 100000:  # TRT 10+: MMmmpp
        return f"{n // 10000}.{(n // 100) % 100}.{n % 100}"
    if n >= 1000:  # TRT 5..9: Mmpp
        return f"{n // 1000}.{(n // 100) % 10}.{n % 100}"
    return None


def _major(version: str | None) -> int | None:
    if not version:
        return None
    try:
        return int(version.split(".")[0])
    except ValueError:
        return None


def _split(line: str) -> tuple[str | None, bool, str]:
    """-> (level letter or None, is [TRT] line, message without prefixes)."""
    m = _PREFIX_RE.match(line)
    lvl = m.group("lvl") if m else None
    msg = line[m.end():] if m else line
    trt = False
    if msg.startswith("[TRT]"):
        trt = True
        msg = msg[5:].lstrip()
    return lvl, trt, msg.rstrip()


class _StatsBuilder:
    def __init__(self) -> None:
        self.vals: dict[str, float] = {}
        self.pcts: dict[float, float] = {}

    def empty(self) -> bool:
        return not self.vals and not self.pcts

    def build(self) -> Stats | None:
        if self.empty():
            return None
        pcts = tuple(sorted(self.pcts.items()))
        return Stats(
            min=self.vals.get("min"),
            max=self.vals.get("max"),
            mean=self.vals.get("mean"),
            median=self.vals.get("median"),
            p90=self.pcts.get(90.0),
            p95=self.pcts.get(95.0),
            p99=self.pcts.get(99.0),
            percentiles=pcts,
        )


def _parse_stats_body(body: str) -> Stats | None:
    b = _StatsBuilder()
    for m in _STAT_ITEM_RE.finditer(body):
        v = _f(m.group("val"))
        if v is None:
            continue
        if m.group("pct"):
            b.pcts[float(m.group("pct"))] = v
        else:
            b.vals[m.group("key")] = v
    return b.build()


_LABEL_FIELD = {
    "Latency": "latency",
    "End-to-End Host Latency": "end_to_end",
    "Enqueue Time": "enqueue",
    "H2D Latency": "h2d",
    "GPU Compute Time": "gpu_compute",
    "D2H Latency": "d2h",
}


# --------------------------------------------------------------------------- log parser


def _looks_like_trtexec(text: str) -> bool:
    probes = (
        r"&&&& (?:RUNNING|PASSED|FAILED) TensorRT\.trtexec",
        r"=== Performance summary ===",
        r"=== (?:Model|Build|System|Inference|Reporting) Options ===",
        r"\[TRT\]",
        r"GPU Compute Time:\s*min\s*=",
        r"^\s*(?:\[[^\]]*\]\s*)*Host Latency\s*$",
        r"=== Profile \(\d+ iterations",
        r"TensorRT version:\s*\d",
    )
    return any(re.search(p, text, re.MULTILINE) for p in probes)


def _profile_row(msg: str, ncols: int) -> LayerTime | None:
    """One row of the --dumpProfile table: a layer name, then ``ncols`` numbers
    (time, average, [median,] percent). Names may contain spaces and digits, so the
    numbers are taken from the right."""
    toks = msg.split()
    if len(toks) <= ncols:
        return None
    nums = [_f(t) for t in toks[-ncols:]]
    if any(v is None for v in nums):
        return None
    name = msg.strip().rsplit(None, ncols)[0]
    if ncols == 4:
        return LayerTime(name, nums[0], nums[1], nums[2], nums[3])
    return LayerTime(name, nums[0], nums[1], None, nums[2])


def _split_runs(lines: list[str]) -> list[list[str]]:
    starts = [i for i, ln in enumerate(lines) if "&&&& RUNNING TensorRT.trtexec" in ln]
    if not starts:
        return [lines]
    bounds = [0] + starts[1:] + [len(lines)]  # text before the first banner joins run 0
    return [lines[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def _parse_run(index: int, lines: list[str]) -> TrtexecRun:
    d: dict[str, Any] = {"index": index}
    notes: list[str] = []
    banner_version: str | None = None
    line_version: str | None = None
    command: str | None = None
    status: str | None = None

    split = [_split(ln) for ln in lines]
    has_summary_header = any(msg.strip() == "=== Performance summary ===" for _, _, msg in split)

    onoff: dict[str, bool] = {}
    precision: str | None = None
    batch_opt: str | None = None
    shape_opts: list[tuple[str, str]] = []
    bindings: list[tuple[str, str]] = []
    created_engine: int | None = None
    loaded_engine: int | None = None
    ctx_mem: int | None = None
    act_mem: int | None = None
    ctx_alloc_mib: int | None = None
    verbose_alloc: int | None = None
    e2e_not_reported = False

    in_summary = False
    summary_warnings: list[str] = []
    stats: dict[str, Stats] = {}

    legacy_section: str | None = None
    legacy: dict[str, _StatsBuilder] = {}
    legacy_e2e = _StatsBuilder()

    profile_iters: int | None = None
    profile_rows: list[LayerTime] | None = None
    profile_total: LayerTime | None = None
    profile_ncols = 4
    in_profile = False

    for raw, (lvl, trt, msg) in zip(lines, split):
        s = msg.strip()

        bm = _BANNER_RE.search(raw)
        if bm:
            if bm.group("status") != "RUNNING":
                status = bm.group("status")
            command = command or (bm.group("cmd") or "").strip() or None
            if bm.group("ver"):
                banner_version = banner_version or decode_trt_version(bm.group("ver"))
            in_summary = False
            in_profile = False
            legacy_section = None
            continue

        # ---- performance summary (TRT 8+ single-line form)
        if s == "=== Performance summary ===":
            in_summary = True
            d["summary_format"] = "single-line"
            continue
        if in_summary:
            if s.startswith("===") or s.startswith("Explanations of the performance metrics"):
                in_summary = False
            elif lvl == "W":
                if s:
                    summary_warnings.append(s.lstrip("* ").strip())
                cm = _COV_RE.search(s)
                if cm:
                    d["cov_percent"] = _f(cm.group("v"))
                continue
            elif lvl == "V":
                continue
        scan_summary = (in_summary or not has_summary_header) and lvl != "V"
        if scan_summary:
            m = _STATS_LINE_RE.match(s)
            if m:
                st_ = _parse_stats_body(m.group("body"))
                if st_ is not None:
                    stats[_LABEL_FIELD[m.group("label")]] = st_
                    d.setdefault("summary_format", "single-line")
                continue
            m = _THROUGHPUT_RE.match(s)
            if m:
                d["throughput_qps"] = _f(m.group("v"))
                continue
            m = _WALLTIME_RE.match(s)
            if m:
                d["total_host_walltime_s"] = _f(m.group("v"))
                continue
            m = _TOTAL_GPU_RE.match(s)
            if m:
                d["total_gpu_compute_s"] = _f(m.group("v"))
                continue
        if lvl != "V" and not in_summary:
            cm = _COV_RE.search(s)
            if cm and "cov_percent" not in d:
                d["cov_percent"] = _f(cm.group("v"))

        # ---- legacy multi-line summary (TRT <= 7)
        if lvl != "V" and s in _LEGACY_HEADERS and ":" not in s:
            legacy_section = _LEGACY_HEADERS[s]
            legacy.setdefault(legacy_section, _StatsBuilder())
            continue
        if legacy_section is not None:
            m = _LEGACY_STAT_RE.match(s)
            if m:
                legacy[legacy_section].vals[m.group("key")] = float(m.group("v"))
                if m.group("e2e") and legacy_section == "latency":
                    legacy_e2e.vals[m.group("key")] = float(m.group("e2e"))
                continue
            m = _LEGACY_PCT_RE.match(s)
            if m:
                pct = float(m.group("pct"))
                legacy[legacy_section].pcts[pct] = float(m.group("v"))
                if m.group("e2e") and legacy_section == "latency":
                    legacy_e2e.pcts[pct] = float(m.group("e2e"))
                continue
            m = _LEGACY_THROUGHPUT_RE.match(s)
            if m:
                d.setdefault("throughput_qps", _f(m.group("v")))
                continue
            m = _LEGACY_WALLTIME_RE.match(s)
            if m:
                d.setdefault("total_host_walltime_s", _f(m.group("v")))
                continue
            m = _LEGACY_TOTAL_RE.match(s)
            if m:
                d.setdefault("total_gpu_compute_s", _f(m.group("v")))
                continue
            legacy_section = None  # anything else ends the section

        # ---- --dumpProfile table
        pm = _PROFILE_HDR_RE.match(s)
        if pm:
            in_profile = True
            profile_iters = int(pm.group("n"))
            profile_rows = []
            continue
        if in_profile:
            if not s:
                in_profile = profile_rows == [] and profile_total is None
                continue
            if "Time (ms)" in s or "Time(ms)" in s:
                profile_ncols = 4 if "Median" in s else 3
                continue
            lt = _profile_row(msg, profile_ncols)
            if lt is not None:
                if lt.name == "Total":
                    profile_total = lt
                else:
                    assert profile_rows is not None
                    profile_rows.append(lt)
                continue
            in_profile = False

        # ---- everything else: build/device/options lines
        if _E2E_NOT_REPORTED in s:
            e2e_not_reported = True
            continue
        m = _VERSION_LINE_RE.match(s)
        if m:
            line_version = line_version or decode_trt_version(m.group("v"))
            continue
        m = _DEVICE_RE.match(s)
        if m:
            d.setdefault("device_name", m.group("v"))
            continue
        m = _DEVICE_LIST_RE.match(s)
        if m:
            d.setdefault("_device_list_name", m.group("v"))
            continue
        m = _CC_RE.match(s)
        if m:
            d.setdefault("compute_capability", m.group("v"))
            continue
        m = _CREATED_ENGINE_RE.match(s)
        if m:
            created_engine = _bytes(m.group("v"), m.group("u") or "MiB")
            continue
        m = _LOADED_ENGINE_RE.match(s)
        if m:
            loaded_engine = _bytes(m.group("v"), m.group("u") or "MiB")
            continue
        m = _CTX_MEM_RE.match(s)
        if m:
            ctx_mem = _bytes(m.group("v"), m.group("u") or "MiB")
            continue
        m = _ACT_MEM_RE.match(s)
        if m:
            act_mem = _bytes(m.group("v"), m.group("u"))  # last one wins (final plan)
            continue
        m = _CTX_ALLOC_RE.search(s)
        if m:
            ctx_alloc_mib = int(m.group("v"))
            continue
        m = _VERBOSE_ALLOC_RE.match(s)
        if m:
            verbose_alloc = int(m.group("v"))
            continue
        m = _BUILT_RE.match(s)
        if m:
            d["build_seconds"] = _f(m.group("v"))
            continue
        m = _DESER_RE.match(s)
        if m:
            d["deserialize_seconds"] = _f(m.group("v"))
            continue
        m = _TRACE_RE.match(s)
        if m:
            d["queries"] = int(m.group("n"))
            continue
        if lvl == "V" or trt:
            continue
        m = _PRECISION_RE.match(s)
        if m and precision is None:
            precision = m.group("v")
            continue
        m = _BATCH_RE.match(s)
        if m and batch_opt is None:
            batch_opt = m.group("v")
            continue
        m = _SHAPE_OPT_RE.match(s)
        if m:
            val = m.group("v")
            if val != "model":
                for part in val.split(","):
                    if "=" in part:
                        name, shape = part.rsplit("=", 1)
                        shape_opts.append((name.strip(), shape.strip()))
            continue
        m = _BINDING_RE.match(s)
        if m:
            name = m.group("a") or m.group("b")
            dims = m.group("ad") or m.group("bd")
            bindings.append((name, dims))
            continue
        m = _ONOFF_RE.match(s)
        if m:
            onoff.setdefault(m.group("k"), m.group("v") == "Enabled")
            continue

    # ---- assemble
    if stats:
        for k, v in stats.items():
            d[k] = v
    elif legacy:
        d["summary_format"] = "legacy-multiline"
        for k, b in legacy.items():
            built = b.build()
            if built is not None:
                d[k] = built
        e2e = legacy_e2e.build()
        if e2e is not None:
            d["end_to_end"] = e2e
        notes.append(
            "legacy pre-TRT-8 multi-line summary (TensorRT 7.x or older); "
            "only percentile(99%) and no H2D/D2H split are printed"
        )

    version = line_version or banner_version
    d["trt_version"] = version
    if version is None:
        notes.append("TensorRT version not printed in this text")
    d["command"] = command
    d["status"] = status
    if "device_name" not in d and "_device_list_name" in d:
        d["device_name"] = d["_device_list_name"]
    d.pop("_device_list_name", None)
    d["summary_warnings"] = tuple(summary_warnings)

    # engine size
    if created_engine is not None:
        d["engine_bytes"], d["engine_size_source"] = created_engine, "created-engine"
    elif loaded_engine is not None:
        d["engine_bytes"], d["engine_size_source"] = loaded_engine, "loaded-engine"
        notes.append("engine size from 'Loaded engine size' is rounded to whole MiB")

    # device memory (activation / context memory), most exact source first
    if ctx_mem is not None:
        d["device_memory_bytes"], d["device_memory_source"] = ctx_mem, "execution-context"
    elif verbose_alloc is not None:  # [V] runtime allocation, exact bytes
        d["device_memory_bytes"], d["device_memory_source"] = verbose_alloc, "verbose-allocation"
    elif act_mem is not None:  # build-time figure of the final plan
        d["device_memory_bytes"], d["device_memory_source"] = act_mem, "total-activation-memory"
    elif ctx_alloc_mib is not None:
        d["device_memory_bytes"] = ctx_alloc_mib * MIB
        d["device_memory_source"] = "context-allocation-mib"
        notes.append("device memory from the IExecutionContext [MemUsageChange] line (whole MiB)")

    # precision
    cmd_tokens = (command or "").split()
    flags: set[str] = set()
    if precision:
        d["precision"] = precision
        for part in re.split(r"[+,\s]+", precision.lower()):
            if part in _PRECISION_FLAGS:
                flags.add(part)
    for tok in cmd_tokens:
        t = tok.split("=", 1)[0].lstrip("-").lower()
        if t in _PRECISION_FLAGS:
            flags.add(t)
        elif t == "stronglytyped":
            flags.add("strongly-typed")
    d["precision_flags"] = tuple(sorted(flags))

    # shapes and batch
    shapes = bindings or shape_opts
    if not shapes:
        for tok in cmd_tokens:
            if tok.startswith("--shapes="):
                for part in tok[len("--shapes="):].split(","):
                    if ":" in part:
                        name, shape = part.rsplit(":", 1)
                        shapes.append((name, shape))
    d["input_shapes"] = tuple(shapes)
    cmd_batch = next(
        (int(t.split("=", 1)[1]) for t in cmd_tokens if re.fullmatch(r"--batch=\d+", t)), None
    )
    if batch_opt is not None and batch_opt.isdigit():
        d["batch"], d["implicit_batch"] = int(batch_opt), True
    elif cmd_batch is not None:
        d["batch"], d["implicit_batch"] = cmd_batch, True
    elif batch_opt is not None and batch_opt.lower().startswith("explicit"):
        d["implicit_batch"] = False
        if shapes:
            lead = shapes[0][1].split("x")[0]
            if lead.isdigit():
                d["batch"] = int(lead)

    if d.get("implicit_batch") and (d.get("batch") or 1) > 1:
        notes.append(
            f"implicit batch {d['batch']}: trtexec counts each batch item as a query, so "
            "throughput_qps is samples/s, not inferences/s"
        )

    # data transfers / CUDA graphs (TRT 11 changed both defaults)
    major = _major(version)
    low_cmd = [t.split("=", 1)[0] for t in cmd_tokens]
    if "Data transfers" in onoff:
        transfers: bool | None = onoff["Data transfers"]
    elif "--noDataTransfers" in low_cmd:
        transfers = False
    elif "--includeDataTransfers" in low_cmd:
        transfers = True
    elif "h2d" in d and d["h2d"].max is not None:
        transfers = d["h2d"].max > 0 or (d.get("d2h") is not None and (d["d2h"].max or 0) > 0)
    elif major is not None:
        transfers = major < 11
    elif d.get("summary_format") == "legacy-multiline":
        transfers = True
    else:
        transfers = None
    d["latency_includes_transfers"] = transfers
    if "CUDA Graph" in onoff:
        d["cuda_graph"] = onoff["CUDA Graph"]
    elif "--useCudaGraph" in low_cmd:
        d["cuda_graph"] = True
    elif major is not None:
        d["cuda_graph"] = major >= 11
    if "Spin-wait" in onoff:
        d["spin_wait"] = onoff["Spin-wait"]
    elif "--useSpinWait" in low_cmd:
        d["spin_wait"] = True
    elif major is not None:
        d["spin_wait"] = major >= 11
    if major is not None and major >= 11:
        notes.append(
            "TensorRT >= 11 trtexec defaults: no H2D/D2H transfers, CUDA graphs, spin-wait and "
            "separate profile run; its 'Latency' is not comparable with TRT <= 10 unless the "
            "flags were normalised"
        )
    if transfers is False:
        notes.append("Latency excludes H2D/D2H transfers (data transfers disabled)")

    # profile table
    if profile_rows is not None and (profile_rows or profile_total):
        d["profile"] = ProfileSummary(
            source="console",
            iterations=profile_iters,
            layers=tuple(profile_rows),
            total_time_ms=profile_total.time_ms if profile_total else None,
            total_average_ms=(
                profile_total.average_ms
                if profile_total
                else sum(x.average_ms or 0.0 for x in profile_rows)
            ),
            total_median_ms=profile_total.median_ms if profile_total else None,
        )

    if not (stats or legacy):
        if e2e_not_reported:
            notes.append(
                "latency missing: no performance summary because the profiler was enabled "
                "(--dumpProfile without --separateProfileRun)"
            )
        else:
            notes.append("latency missing: no performance summary in this text")

    d["notes"] = tuple(notes)
    return TrtexecRun(**d)


def parse_trtexec_log(text: str | bytes) -> TrtexecResult:
    """Parse trtexec console output (one or more runs) into a :class:`TrtexecResult`.

    Lenient: unknown lines are ignored and missing fields are ``None``. Raises
    :class:`TrtexecParseError` only when the text is empty or shows no trtexec marker
    at all (banner, option headers, ``[TRT]`` lines, performance summary, ...).
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if text is None or not str(text).strip():
        raise TrtexecParseError("not trtexec output: the text is empty")
    if not _looks_like_trtexec(text):
        raise TrtexecParseError(
            "not trtexec output: no '&&&& RUNNING TensorRT.trtexec' banner, option headers, "
            "[TRT] lines or performance summary found"
        )
    lines = text.splitlines()
    runs = tuple(_parse_run(i, chunk) for i, chunk in enumerate(_split_runs(lines)))
    return TrtexecResult(runs=runs)


# --------------------------------------------------------------------------- JSON exports


def _nearest_rank(sorted_vals: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least pct% of data <= it."""
    n = len(sorted_vals)
    k = max(1, math.ceil(pct / 100.0 * n))
    return sorted_vals[min(k, n) - 1]


def _series_stats(values: Iterable[float]) -> Stats:
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
    return (
        isinstance(data, list)
        and len(data) > 0
        and all(isinstance(r, dict) for r in data)
        and all("latencyMs" in r and "computeMs" in r for r in data)
    )


def _is_profile(data: Any) -> bool:
    if not (isinstance(data, list) and len(data) >= 2 and isinstance(data[0], dict)):
        return False
    if set(data[0].keys()) != {"count"}:
        return False
    return all(isinstance(r, dict) and "name" in r for r in data[1:])


def parse_trtexec_times_json(data: Any) -> TimesSummary:
    """Summarise a ``--exportTimes`` JSON (list of per-inference timing records).

    std is the sample standard deviation, percentiles use the nearest-rank method.
    """
    if not _is_times(data):
        raise TrtexecParseError(
            "not a trtexec --exportTimes JSON: expected a non-empty list of records with "
            "'latencyMs' and 'computeMs'"
        )
    latency = _series_stats(r["latencyMs"] for r in data)
    compute = _series_stats(r["computeMs"] for r in data)
    h2d = _series_stats(r["h2dMs"] for r in data) if all("h2dMs" in r for r in data) else None
    d2h = _series_stats(r["d2hMs"] for r in data) if all("d2hMs" in r for r in data) else None
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


def parse_trtexec_profile_json(data: Any) -> ProfileSummary:
    """Parse a ``--exportProfile`` JSON: ``[{"count": N}, {name, timeMs, averageMs,
    medianMs, percentage}, ...]``."""
    if not _is_profile(data):
        raise TrtexecParseError(
            "not a trtexec --exportProfile JSON: expected a list starting with {\"count\": N} "
            "followed by per-layer records with 'name'"
        )
    layers = tuple(
        LayerTime(
            name=str(r["name"]),
            time_ms=_f(r.get("timeMs")),
            average_ms=_f(r.get("averageMs")),
            median_ms=_f(r.get("medianMs")),
            percentage=_f(r.get("percentage")),
        )
        for r in data[1:]
    )

    def total(attr: str) -> float | None:
        vals = [getattr(x, attr) for x in layers]
        return sum(v for v in vals if v is not None) if any(v is not None for v in vals) else None

    count = data[0].get("count")
    return ProfileSummary(
        source="json",
        iterations=int(count) if isinstance(count, (int, float)) else None,
        layers=layers,
        total_time_ms=total("time_ms"),
        total_average_ms=total("average_ms"),
        total_median_ms=total("median_ms"),
    )


def load_trtexec_json(path_or_obj: Any) -> TimesSummary | ProfileSummary:
    """Load a trtexec JSON export (path, JSON text, bytes or already-decoded object) and
    dispatch on its shape: ``--exportTimes`` -> :class:`TimesSummary`,
    ``--exportProfile`` -> :class:`ProfileSummary`. Anything else raises
    :class:`TrtexecParseError`."""
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
    if _is_times(obj):
        return parse_trtexec_times_json(obj)
    if _is_profile(obj):
        return parse_trtexec_profile_json(obj)
    raise TrtexecParseError(
        "JSON is neither a trtexec --exportTimes trace (records with latencyMs/computeMs) nor "
        "an --exportProfile (list starting with {\"count\": N})"
    )


# --------------------------------------------------------------------------- measurement


def _tegra_summary(tegrastats: Any) -> dict | None:
    if tegrastats is None:
        return None
    if isinstance(tegrastats, dict):
        return tegrastats
    from targets import tegrastats as tg  # local import: keep modules independent

    if isinstance(tegrastats, (str, bytes)):
        samples = tg.parse_tegrastats(tegrastats)
    else:
        samples = list(tegrastats)
    return tg.summarize(samples)


def to_measurement(result: Any, tegrastats: Any = None) -> dict:
    """Build the pipeline's measurement record M from a parsed trtexec log.

    ``result`` is a :class:`TrtexecResult` (its last run is used), a
    :class:`TrtexecRun`, or a :class:`TimesSummary`. ``tegrastats`` may be the dict from
    :func:`targets.tegrastats.summarize`, a list of samples or raw tegrastats text; it is
    used for ``memory_mb`` (peak RAM minus first sample) when the log prints no device
    memory size, and for the device name when the log has none.
    """
    notes: list[str] = []
    tsum = _tegra_summary(tegrastats)

    if isinstance(result, TimesSummary):
        run = None
        lat = result.compute
        lat_name = "compute"
        throughput = None
        trt_version = None
        device = None
        engine_bytes = None
        mem_bytes = None
        source = "trtexec-times-json"
        notes.append(f"latency_ms from computeMs of {result.n} exported inferences")
        notes.extend(result.notes)
    else:
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
        lat = run.primary_latency
        throughput = run.throughput_qps
        trt_version = run.trt_version
        device = run.device_name
        engine_bytes = run.engine_bytes
        mem_bytes = run.device_memory_bytes
        source = "trtexec-log"
        if lat_name == "gpu_compute":
            notes.append(
                "latency_ms from 'GPU Compute Time' (primary: excludes H2D/D2H and host overhead)"
            )
        elif lat_name == "latency":
            notes.append("latency_ms from host 'Latency' (no GPU Compute Time printed)")
        elif lat_name == "end_to_end":
            notes.append("latency_ms from 'End-to-End Host Latency'")
        notes.extend(run.notes)

    cv = lat.cv if lat is not None else None
    std = lat.std if lat is not None else None
    if run is not None and lat is not None and lat_name == "gpu_compute" and run.cov_percent:
        cv = run.cov_percent / 100.0
        if lat.mean is not None:
            std = cv * lat.mean
        notes.append("cv from trtexec's coefficient-of-variance warning; std = cv * mean")

    if mem_bytes is not None:
        memory_mb: float | None = mem_bytes / MIB
        notes.append(f"memory_mb from trtexec device memory size ({run.device_memory_source})")
    elif tsum is not None and tsum.get("ram_growth_mb") is not None:
        memory_mb = float(tsum["ram_growth_mb"])
        notes.append("memory_mb from tegrastats: peak RAM used minus first sample (unified memory)")
    else:
        memory_mb = None

    if not device and tsum is not None and tsum.get("module_guess"):
        device = f"{tsum['module_guess']} (guessed from tegrastats)"
    measured_on = f"trtexec {trt_version or '(version unknown)'} on {device or 'unknown device'}"

    return {
        "latency_ms": {
            "median": lat.median if lat else None,
            "p90": lat.p90 if lat else None,
            "p99": lat.p99 if lat else None,
            "mean": lat.mean if lat else None,
            "std": std,
            "cv": cv,
        },
        "throughput": throughput,
        "memory_mb": memory_mb,
        "onnx_bytes": None,
        "engine_bytes": engine_bytes,
        "params": None,
        "macs": None,
        "accuracy": None,
        "accuracy_metric": None,
        "measured_on": measured_on,
        "source": source,
        "trt_version": trt_version,
        "notes": notes,
    }
