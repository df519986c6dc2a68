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

Structure: :func:`parse_trtexec_log` splits the text into runs and hands each run's lines
to ``_RunParser``, a state object holding the fields collected so far (declared in
:class:`~targets.trtexec.run_state.RunState`). Its dispatch loop offers every line to one
handler method per section or line kind, in a fixed order (banner; summary header, summary
block and single-line summary items of TRT 8.0-8.3 / 8.4 / 8.5+ / 10 / 11, which share one
line grammar; CoV warning; TRT 7 multi-line summary; ``--dumpProfile`` table; version,
device, engine-size, memory and build-time lines; option headers), and the first handler
that claims a line ends its turn. ``RunState.build`` then resolves what was collected
(which summary wins, preferred engine and memory sources, precision flags, shapes and
batch, TRT 11 defaults, notes) into a :class:`TrtexecRun`. The line patterns live in
:mod:`~targets.trtexec.patterns`, the record types in :mod:`~targets.trtexec.records`, the
JSON exports in :mod:`~targets.trtexec.exports` and the measurement record in
:mod:`~targets.trtexec.measurement`; every public name is re-exported here.

Only the Python standard library is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar, NamedTuple

from targets.trtexec.exports import load_trtexec_json, parse_trtexec_profile_json, parse_trtexec_times_json
from targets.trtexec.measurement import to_measurement
from targets.trtexec.patterns import (
    BANNER_RE,
    BATCH_RE,
    BINDING_RE,
    BUILT_RE,
    CC_RE,
    COV_RE,
    CTX_ALLOC_RE,
    DESER_RE,
    DEVICE_LIST_RE,
    DEVICE_RE,
    E2E_NOT_REPORTED,
    LABEL_FIELD,
    LEGACY_HEADERS,
    LEGACY_PCT_RE,
    LEGACY_SCALARS,
    LEGACY_STAT_RE,
    ONOFF_RE,
    PRECISION_RE,
    PREFIX_RE,
    PROFILE_HDR_RE,
    SHAPE_OPT_RE,
    SIZE_LINES,
    SIZE_UNITS,
    STAT_ITEM_RE,
    STATS_LINE_RE,
    SUMMARY_SCALARS,
    TRACE_RE,
    TRTEXEC_PROBES,
    VERBOSE_ALLOC_RE,
    VERSION_LINE_RE,
)
from targets.trtexec.records import MIB as MIB  # re-exported
from targets.trtexec.records import (
    LayerTime,
    ProfileSummary,
    Stats,
    TimesSummary,
    TrtexecParseError,
    TrtexecResult,
    TrtexecRun,
    to_float,
)
from targets.trtexec.run_state import RunState, StatsBuilder

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

_SUMMARY_HEADER = "=== Performance summary ==="


# --------------------------------------------------------------------------- helpers


def decode_trt_version(raw: str | int | None) -> str | None:
    """Decode a TensorRT version as printed by trtexec.

    ``"8.2.3"`` stays as is; the integer forms of the banner / ``TensorRT version:``
    line are decoded: ``8003`` -> ``"8.0.3"``, ``8502`` -> ``"8.5.2"``,
    ``101601`` -> ``"10.16.1"`` (TRT >= 10 uses major*10000 + minor*100 + patch).

    Args:
        raw: The version as printed (string or integer), or ``None``.

    Returns:
        The dotted version, or ``None`` when ``raw`` is absent or not a version.
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


def _bytes(value: str, unit: str | None) -> int | None:
    """A printed size in bytes (``unit`` as printed; unknown units count as bytes)."""
    v = to_float(value)
    if v is None:
        return None
    return int(round(v * SIZE_UNITS.get((unit or "").lower(), 1)))


class _Line(NamedTuple):
    """One console line: the raw text, its ``[I]``/``[W]``/... level, whether it is a
    ``[TRT]`` line, the message without prefixes, and that message stripped."""

    raw: str
    lvl: str | None
    trt: bool
    msg: str
    s: str

    @classmethod
    def of(cls, raw: str) -> _Line:
        """Split the timestamp, level and ``[TRT]`` prefixes off one raw line."""
        m = PREFIX_RE.match(raw)
        lvl = m.group("lvl") if m else None
        msg = raw[m.end():] if m else raw
        trt = False
        if msg.startswith("[TRT]"):
            trt = True
            msg = msg[5:].lstrip()
        msg = msg.rstrip()
        return cls(raw, lvl, trt, msg, msg.strip())


def _parse_stats_body(body: str) -> Stats | None:
    """The items of a single-line summary series (``min = X ms, ..., percentile(99%) = Y ms``)."""
    b = StatsBuilder()
    for m in STAT_ITEM_RE.finditer(body):
        v = to_float(m.group("val"))
        if v is None:
            continue
        if m.group("pct"):
            b.pcts[float(m.group("pct"))] = v
        else:
            b.vals[m.group("key")] = v
    return b.build()


def _looks_like_trtexec(text: str) -> bool:
    """Whether the text shows any trtexec marker at all."""
    return any(re.search(p, text, re.MULTILINE) for p in TRTEXEC_PROBES)


def _profile_row(msg: str, ncols: int) -> LayerTime | None:
    """One row of the --dumpProfile table: a layer name, then ``ncols`` numbers
    (time, average, [median,] percent). Names may contain spaces and digits, so the
    numbers are taken from the right."""
    toks = msg.split()
    if len(toks) <= ncols:
        return None
    nums = [to_float(t) for t in toks[-ncols:]]
    if any(v is None for v in nums):
        return None
    name = msg.strip().rsplit(None, ncols)[0]
    if ncols == 4:
        return LayerTime(name, nums[0], nums[1], nums[2], nums[3])
    return LayerTime(name, nums[0], nums[1], None, nums[2])


def _split_runs(lines: list[str]) -> list[list[str]]:
    """Cut the lines at each ``&&&& RUNNING`` banner; text before the first joins run 0."""
    starts = [i for i, ln in enumerate(lines) if "&&&& RUNNING TensorRT.trtexec" in ln]
    if not starts:
        return [lines]
    bounds = [0] + starts[1:] + [len(lines)]  # text before the first banner joins run 0
    return [lines[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


# --------------------------------------------------------------------------- log parser


class _RunParser(RunState):
    """Fields collected from the lines of one run, and one handler per kind of line.

    Each ``_on_*`` handler gets a :class:`_Line` and returns ``True`` when the line is its
    own (the dispatch loop in :meth:`feed` then stops), ``False`` to offer the line to the
    next handler in :attr:`_HANDLERS`. :meth:`build` turns the fields into a
    :class:`TrtexecRun`.
    """

    def feed(self, line: _Line) -> None:
        """Offer one line to the handlers in order until one claims it."""
        for handler in self._HANDLERS:
            if handler(self, line):
                return

    # ------------------------------------------------------------------ banner

    def _on_banner(self, line: _Line) -> bool:
        """``&&&& RUNNING|PASSED|FAILED TensorRT.trtexec [TensorRT vN] # cmd``: status,
        command, version (absent before TRT 8); any open section ends."""
        bm = BANNER_RE.search(line.raw)
        if not bm:
            return False
        if bm.group("status") != "RUNNING":
            self.status = bm.group("status")
        self.command = self.command or (bm.group("cmd") or "").strip() or None
        if bm.group("ver"):
            self.banner_version = self.banner_version or decode_trt_version(bm.group("ver"))
        self.in_summary = False
        self.profile.active = False
        self.legacy_section = None
        return True

    # ------------------------------------------------------------------ summary, TRT 8.0+

    def _on_summary_header(self, line: _Line) -> bool:
        """``=== Performance summary ===`` opens the single-line summary block (TRT 8+)."""
        if line.s != _SUMMARY_HEADER:
            return False
        self.in_summary = True
        self.summary_format = "single-line"
        return True

    def _on_summary_block(self, line: _Line) -> bool:
        """Inside the summary block: the next ``===`` header or the "Explanations" line closes
        it; ``[W]`` lines are summary warnings (TRT 8.4+ CoV warning); ``[V]`` explanation
        lines (``--verbose``) are skipped."""
        if not self.in_summary:
            return False
        s = line.s
        if s.startswith("===") or s.startswith("Explanations of the performance metrics"):
            self.in_summary = False
            return False
        if line.lvl == "W":
            if s:
                self.summary_warnings.append(s.lstrip("* ").strip())
            cm = COV_RE.search(s)
            if cm:
                self.cov_percent = to_float(cm.group("v"))
            return True
        return line.lvl == "V"

    def _on_summary_item(self, line: _Line) -> bool:
        """One summary line: a series (``GPU Compute Time: min = ...``; TRT 8.0-8.3 add
        ``End-to-End Host Latency``, 8.5+ / 10 / 11 print ``percentile(90%/95%/99%)``) or a
        scalar (throughput, walltime, total GPU time). Read inside the summary block, or
        anywhere in a summary-only paste that lacks the header."""
        if not (self.in_summary or not self.has_summary_header) or line.lvl == "V":
            return False
        m = STATS_LINE_RE.match(line.s)
        if m:
            stats = _parse_stats_body(m.group("body"))
            if stats is not None:
                self.stats[LABEL_FIELD[m.group("label")]] = stats
                if self.summary_format is None:
                    self.summary_format = "single-line"
            return True
        for rx, attr in SUMMARY_SCALARS:
            m = rx.match(line.s)
            if m:
                setattr(self, attr, to_float(m.group("v")))
                return True
        return False

    def _on_cov_warning(self, line: _Line) -> bool:
        """A coefficient-of-variance warning outside the summary block (never claims the line)."""
        if line.lvl != "V" and not self.in_summary and self.cov_percent is None:
            cm = COV_RE.search(line.s)
            if cm:
                self.cov_percent = to_float(cm.group("v"))
        return False

    # ------------------------------------------------------------------ summary, TRT <= 7

    def _on_legacy_header(self, line: _Line) -> bool:
        """A TRT 7 section title on its own line (``Host Latency``, ``GPU Compute``, ...)."""
        if line.lvl == "V" or line.s not in LEGACY_HEADERS or ":" in line.s:
            return False
        self.legacy_section = LEGACY_HEADERS[line.s]
        self.legacy.setdefault(self.legacy_section, StatsBuilder())
        return True

    def _on_legacy_item(self, line: _Line) -> bool:
        """A line of an open TRT 7 section (``min: X ms (end to end Y ms)``, ``percentile: X ms
        at 99%``, ``throughput: N qps``, ...); any other line closes the section."""
        section = self.legacy_section
        if section is None:
            return False
        s = line.s
        m = LEGACY_STAT_RE.match(s)
        if m:
            self.legacy[section].vals[m.group("key")] = float(m.group("v"))
            if m.group("e2e") and section == "latency":
                self.legacy_e2e.vals[m.group("key")] = float(m.group("e2e"))
            return True
        m = LEGACY_PCT_RE.match(s)
        if m:
            pct = float(m.group("pct"))
            self.legacy[section].pcts[pct] = float(m.group("v"))
            if m.group("e2e") and section == "latency":
                self.legacy_e2e.pcts[pct] = float(m.group("e2e"))
            return True
        for rx, attr in LEGACY_SCALARS:
            m = rx.match(s)
            if m:
                if getattr(self, attr) is None:
                    setattr(self, attr, to_float(m.group("v")))
                return True
        self.legacy_section = None  # anything else ends the section
        return False

    # ------------------------------------------------------------------ --dumpProfile table

    def _on_profile_header(self, line: _Line) -> bool:
        """``=== Profile (N iterations ) ===`` opens the per-layer table."""
        pm = PROFILE_HDR_RE.match(line.s)
        if not pm:
            return False
        self.profile.active = True
        self.profile.iterations = int(pm.group("n"))
        self.profile.rows = []
        return True

    def _on_profile_row(self, line: _Line) -> bool:
        """A line of the open table: column header (with or without ``Median``), layer row or
        ``Total`` row; a blank line after rows, or any other line, closes the table."""
        table = self.profile
        if not table.active:
            return False
        s = line.s
        if not s:
            table.active = table.rows == [] and table.total is None
            return True
        if "Time (ms)" in s or "Time(ms)" in s:
            table.ncols = 4 if "Median" in s else 3
            return True
        lt = _profile_row(line.msg, table.ncols)
        if lt is None:
            table.active = False
            return False
        if lt.name == "Total":
            table.total = lt
        else:
            assert table.rows is not None
            table.rows.append(lt)
        return True

    # ------------------------------------------------------------------ build / device lines

    def _on_e2e_not_reported(self, line: _Line) -> bool:
        """The profiler's "e2e network timing is not reported" (no summary follows)."""
        if E2E_NOT_REPORTED not in line.s:
            return False
        self.e2e_not_reported = True
        return True

    def _on_version_line(self, line: _Line) -> bool:
        """``TensorRT version: 8.6.1`` (or its integer form); the first one counts."""
        m = VERSION_LINE_RE.match(line.s)
        if not m:
            return False
        self.line_version = self.line_version or decode_trt_version(m.group("v"))
        return True

    def _on_device_block(self, line: _Line) -> bool:
        """``Selected Device:``, ``Device 0: "name"`` and ``Compute Capability:`` (TRT 8+)."""
        s = line.s
        for rx, attr in (
            (DEVICE_RE, "device_name"),
            (DEVICE_LIST_RE, "device_list_name"),
            (CC_RE, "compute_capability"),
        ):
            m = rx.match(s)
            if m:
                if getattr(self, attr) is None:
                    setattr(self, attr, m.group("v"))
                return True
        return False

    def _on_size_line(self, line: _Line) -> bool:
        """Engine and device-memory sizes: "Created engine with size" (TRT 10), "Loaded engine
        size", "Created execution context with device memory size" (TRT 10), "Total
        Activation Memory", the IExecutionContext [MemUsageChange] line and ``[V]``
        allocations."""
        s = line.s
        for rx, attr, unit in SIZE_LINES:
            m = rx.match(s)
            if m:
                setattr(self, attr, _bytes(m.group("v"), m.group("u") or unit))
                return True
        m = CTX_ALLOC_RE.search(s)
        if m:
            self.ctx_alloc_mib = int(m.group("v"))
            return True
        m = VERBOSE_ALLOC_RE.match(s)
        if m:
            self.verbose_alloc = int(m.group("v"))
            return True
        return False

    def _on_timing_line(self, line: _Line) -> bool:
        """"Engine built in", "Engine deserialized in" and "Timing trace has N queries"."""
        s = line.s
        m = BUILT_RE.match(s)
        if m:
            self.build_seconds = to_float(m.group("v"))
            return True
        m = DESER_RE.match(s)
        if m:
            self.deserialize_seconds = to_float(m.group("v"))
            return True
        m = TRACE_RE.match(s)
        if m:
            self.queries = int(m.group("n"))
            return True
        return False

    def _skip_verbose_and_trt(self, line: _Line) -> bool:
        """``[V]`` and ``[TRT]`` lines carry no option the handlers below read."""
        return line.lvl == "V" or line.trt

    # ------------------------------------------------------------------ option headers

    def _on_precision(self, line: _Line) -> bool:
        """``Precision: FP32+FP16`` (the first one counts)."""
        m = PRECISION_RE.match(line.s)
        if not m or self.precision is not None:
            return False
        self.precision = m.group("v")
        return True

    def _on_batch(self, line: _Line) -> bool:
        """``Batch: 8`` / ``Batch: Explicit`` (the first one counts)."""
        m = BATCH_RE.match(line.s)
        if not m or self.batch_opt is not None:
            return False
        self.batch_opt = m.group("v")
        return True

    def _on_input_shapes(self, line: _Line) -> bool:
        """``Input inference shapes: x=1x3x224x224,...`` and input-binding lines."""
        s = line.s
        m = SHAPE_OPT_RE.match(s)
        if m:
            val = m.group("v")
            if val != "model":
                for part in val.split(","):
                    if "=" in part:
                        name, shape = part.rsplit("=", 1)
                        self.shape_opts.append((name.strip(), shape.strip()))
            return True
        m = BINDING_RE.match(s)
        if m:
            self.bindings.append((m.group("a") or m.group("b"), m.group("ad") or m.group("bd")))
            return True
        return False

    def _on_onoff(self, line: _Line) -> bool:
        """``Data transfers`` / ``CUDA Graph`` / ``Spin-wait: Enabled|Disabled`` (first counts)."""
        m = ONOFF_RE.match(line.s)
        if not m:
            return False
        self.onoff.setdefault(m.group("k"), m.group("v") == "Enabled")
        return True

    # The dispatch order: the first handler that returns True ends a line's turn.
    _HANDLERS: ClassVar[tuple[Callable[[_RunParser, _Line], bool], ...]] = (
        _on_banner,
        _on_summary_header,
        _on_summary_block,
        _on_summary_item,
        _on_cov_warning,
        _on_legacy_header,
        _on_legacy_item,
        _on_profile_header,
        _on_profile_row,
        _on_e2e_not_reported,
        _on_version_line,
        _on_device_block,
        _on_size_line,
        _on_timing_line,
        _skip_verbose_and_trt,
        _on_precision,
        _on_batch,
        _on_input_shapes,
        _on_onoff,
    )


def _parse_run(index: int, lines: list[str]) -> TrtexecRun:
    """Parse the lines of one run (one ``&&&& RUNNING`` block, or the whole text).

    Args:
        index: Position of the run in the text.
        lines: Its console lines.

    Returns:
        The run, with whatever the lines show.
    """
    parsed = [_Line.of(raw) for raw in lines]
    parser = _RunParser(index=index, has_summary_header=any(ln.s == _SUMMARY_HEADER for ln in parsed))
    for line in parsed:
        parser.feed(line)
    return parser.build()


def parse_trtexec_log(text: str | bytes) -> TrtexecResult:
    """Parse trtexec console output (one or more runs) into a :class:`TrtexecResult`.

    Lenient: unknown lines are ignored and missing fields are ``None``.

    Args:
        text: The console output, as text or bytes (decoded as UTF-8, errors replaced).

    Returns:
        One :class:`TrtexecRun` per ``&&&& RUNNING`` banner (at least one).

    Raises:
        TrtexecParseError: The text is empty or shows no trtexec marker at all (banner,
            option headers, ``[TRT]`` lines, performance summary, ...).
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
