"""The fields collected from the console lines of one ``trtexec`` run, and how they resolve
into a :class:`~targets.trtexec.records.TrtexecRun`.

:class:`RunState` holds what the line handlers of :mod:`targets.trtexec.log` found (raw
candidates for each field, as printed); :meth:`RunState.build` applies the resolution rules,
one method each: which summary wins (single-line or TRT 7 multi-line), version, engine size
and device memory (most exact source first), precision flags, input shapes and batch, the
data-transfer / CUDA-graph / spin-wait state with the TRT 11 defaults, the profile table, and
the notes that explain what is missing or not comparable. Only the Python standard library
is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from targets.trtexec.patterns import PRECISION_FLAGS
from targets.trtexec.records import MIB, LayerTime, ProfileSummary, Stats, TrtexecRun, major_version

__all__ = ["StatsBuilder", "ProfileTable", "RunState"]

_TRT11_NOTE = (
    "TensorRT >= 11 trtexec defaults: no H2D/D2H transfers, CUDA graphs, spin-wait and "
    "separate profile run; its 'Latency' is not comparable with TRT <= 10 unless the "
    "flags were normalised"
)
_LEGACY_NOTE = (
    "legacy pre-TRT-8 multi-line summary (TensorRT 7.x or older); "
    "only percentile(99%) and no H2D/D2H split are printed"
)


class StatsBuilder:
    """Values of one timing series collected item by item."""

    def __init__(self) -> None:
        self.vals: dict[str, float] = {}
        self.pcts: dict[float, float] = {}

    def empty(self) -> bool:
        """Whether nothing was collected."""
        return not self.vals and not self.pcts

    def build(self) -> Stats | None:
        """The collected series, or ``None`` when nothing was collected."""
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


@dataclass
class ProfileTable:
    """State of a ``--dumpProfile`` console table (``=== Profile (N iterations ) ===``)."""

    iterations: int | None = None
    rows: list[LayerTime] | None = None  # None: no table header seen
    total: LayerTime | None = None
    ncols: int = 4  # numbers per row: time, average, [median,] percent
    active: bool = False

    def summary(self) -> ProfileSummary | None:
        """The table as a :class:`ProfileSummary`, or ``None`` when it has no row."""
        if self.rows is None or not (self.rows or self.total):
            return None
        total = self.total
        return ProfileSummary(
            source="console",
            iterations=self.iterations,
            layers=tuple(self.rows),
            total_time_ms=total.time_ms if total else None,
            total_average_ms=total.average_ms if total else sum(x.average_ms or 0.0 for x in self.rows),
            total_median_ms=total.median_ms if total else None,
        )


@dataclass
class _Inference:
    """Resolved inference settings of a run (what :class:`TrtexecRun` reports as such)."""

    input_shapes: tuple[tuple[str, str], ...] = ()
    batch: int | None = None
    implicit_batch: bool | None = None
    latency_includes_transfers: bool | None = None
    cuda_graph: bool | None = None
    spin_wait: bool | None = None


def _on_by_default(onoff: dict[str, bool], key: str, flag: str, low_cmd: list[str], major: int | None) -> bool | None:
    """An on/off inference option: the printed state, else ``True`` if the command line has
    ``flag``, else the release default (on from TRT 11), else ``None``."""
    if key in onoff:
        return onoff[key]
    if flag in low_cmd:
        return True
    if major is not None:
        return major >= 11
    return None


def _command_shapes(cmd_tokens: list[str]) -> list[tuple[str, str]]:
    """``--shapes=name:NxCxHxW,...`` from the command line."""
    shapes: list[tuple[str, str]] = []
    for tok in cmd_tokens:
        if tok.startswith("--shapes="):
            for part in tok[len("--shapes="):].split(","):
                if ":" in part:
                    name, shape = part.rsplit(":", 1)
                    shapes.append((name, shape))
    return shapes


@dataclass
class RunState:
    """Everything the line handlers collected from one run, before resolution."""

    index: int
    has_summary_header: bool = False  # the run prints "=== Performance summary ==="
    # banner / version
    banner_version: str | None = None
    line_version: str | None = None
    command: str | None = None
    status: str | None = None
    # device block
    device_name: str | None = None
    device_list_name: str | None = None
    compute_capability: str | None = None
    # summary (all release families)
    summary_format: str | None = None
    in_summary: bool = False
    stats: dict[str, Stats] = field(default_factory=dict)
    throughput_qps: float | None = None
    total_host_walltime_s: float | None = None
    total_gpu_compute_s: float | None = None
    queries: int | None = None
    cov_percent: float | None = None
    summary_warnings: list[str] = field(default_factory=list)
    e2e_not_reported: bool = False
    # TRT <= 7 multi-line summary
    legacy_section: str | None = None
    legacy: dict[str, StatsBuilder] = field(default_factory=dict)
    legacy_e2e: StatsBuilder = field(default_factory=StatsBuilder)
    # --dumpProfile table
    profile: ProfileTable = field(default_factory=ProfileTable)
    # build / engine / memory
    created_engine: int | None = None
    loaded_engine: int | None = None
    ctx_mem: int | None = None
    act_mem: int | None = None
    ctx_alloc_mib: int | None = None
    verbose_alloc: int | None = None
    build_seconds: float | None = None
    deserialize_seconds: float | None = None
    # options
    precision: str | None = None
    batch_opt: str | None = None
    shape_opts: list[tuple[str, str]] = field(default_factory=list)
    bindings: list[tuple[str, str]] = field(default_factory=list)
    onoff: dict[str, bool] = field(default_factory=dict)
    # filled by build()
    notes: list[str] = field(default_factory=list)

    def build(self) -> TrtexecRun:
        """Resolve the collected fields into a :class:`TrtexecRun` (notes in a fixed order)."""
        series = self._resolve_series()
        version = self._resolve_version()
        engine_bytes, engine_source = self._resolve_engine_size()
        memory_bytes, memory_source = self._resolve_device_memory()
        cmd_tokens = (self.command or "").split()
        inference = self._resolve_shapes_and_batch(cmd_tokens)
        self._resolve_trt11_defaults(inference, cmd_tokens, series, major_version(version))
        self._note_missing_latency()
        return TrtexecRun(
            index=self.index,
            trt_version=version,
            command=self.command,
            status=self.status,
            summary_format=self.summary_format,
            device_name=self.device_name if self.device_name is not None else self.device_list_name,
            compute_capability=self.compute_capability,
            throughput_qps=self.throughput_qps,
            total_host_walltime_s=self.total_host_walltime_s,
            total_gpu_compute_s=self.total_gpu_compute_s,
            queries=self.queries,
            cov_percent=self.cov_percent,
            summary_warnings=tuple(self.summary_warnings),
            engine_bytes=engine_bytes,
            engine_size_source=engine_source,
            device_memory_bytes=memory_bytes,
            device_memory_source=memory_source,
            build_seconds=self.build_seconds,
            deserialize_seconds=self.deserialize_seconds,
            precision=self.precision or None,
            precision_flags=self._resolve_precision_flags(cmd_tokens),
            input_shapes=inference.input_shapes,
            batch=inference.batch,
            implicit_batch=inference.implicit_batch,
            latency_includes_transfers=inference.latency_includes_transfers,
            cuda_graph=inference.cuda_graph,
            spin_wait=inference.spin_wait,
            profile=self.profile.summary(),
            notes=tuple(self.notes),
            **series,
        )

    def _resolve_series(self) -> dict[str, Stats]:
        """Timing series by :class:`TrtexecRun` field: the single-line summary (TRT 8+) if
        any, else the TRT 7 multi-line one (which also sets ``summary_format``)."""
        if self.stats:
            return dict(self.stats)
        series: dict[str, Stats] = {}
        if self.legacy:
            self.summary_format = "legacy-multiline"
            for name, builder in self.legacy.items():
                built = builder.build()
                if built is not None:
                    series[name] = built
            e2e = self.legacy_e2e.build()
            if e2e is not None:
                series["end_to_end"] = e2e
            self.notes.append(_LEGACY_NOTE)
        return series

    def _resolve_version(self) -> str | None:
        """The ``TensorRT version:`` line, else the banner's version (TRT 8+)."""
        version = self.line_version or self.banner_version
        if version is None:
            self.notes.append("TensorRT version not printed in this text")
        return version

    def _resolve_engine_size(self) -> tuple[int | None, str | None]:
        """``(bytes, source)`` of the engine: "Created engine with size" (TRT 10), else the
        whole-MiB "Loaded engine size"."""
        if self.created_engine is not None:
            return self.created_engine, "created-engine"
        if self.loaded_engine is not None:
            self.notes.append("engine size from 'Loaded engine size' is rounded to whole MiB")
            return self.loaded_engine, "loaded-engine"
        return None, None

    def _resolve_device_memory(self) -> tuple[int | None, str | None]:
        """``(bytes, source)`` of the activation / context memory, most exact source first."""
        if self.ctx_mem is not None:
            return self.ctx_mem, "execution-context"
        if self.verbose_alloc is not None:  # [V] runtime allocation, exact bytes
            return self.verbose_alloc, "verbose-allocation"
        if self.act_mem is not None:  # build-time figure of the final plan
            return self.act_mem, "total-activation-memory"
        if self.ctx_alloc_mib is not None:
            self.notes.append("device memory from the IExecutionContext [MemUsageChange] line (whole MiB)")
            return self.ctx_alloc_mib * MIB, "context-allocation-mib"
        return None, None

    def _resolve_precision_flags(self, cmd_tokens: list[str]) -> tuple[str, ...]:
        """Sorted precision flags from the ``Precision:`` option line and the command line."""
        flags: set[str] = set()
        if self.precision:
            for part in re.split(r"[+,\s]+", self.precision.lower()):
                if part in PRECISION_FLAGS:
                    flags.add(part)
        for tok in cmd_tokens:
            t = tok.split("=", 1)[0].lstrip("-").lower()
            if t in PRECISION_FLAGS:
                flags.add(t)
            elif t == "stronglytyped":
                flags.add("strongly-typed")
        return tuple(sorted(flags))

    def _resolve_shapes_and_batch(self, cmd_tokens: list[str]) -> _Inference:
        """Input shapes (bindings, else the shapes option, else ``--shapes=``) and the batch:
        implicit from ``Batch: N`` or ``--batch=N``, else explicit with the lead dimension."""
        shapes = self.bindings or self.shape_opts or _command_shapes(cmd_tokens)
        inference = _Inference(input_shapes=tuple(shapes))
        cmd_batch = next((int(t.split("=", 1)[1]) for t in cmd_tokens if re.fullmatch(r"--batch=\d+", t)), None)
        batch_opt = self.batch_opt
        if batch_opt is not None and batch_opt.isdigit():
            inference.batch, inference.implicit_batch = int(batch_opt), True
        elif cmd_batch is not None:
            inference.batch, inference.implicit_batch = cmd_batch, True
        elif batch_opt is not None and batch_opt.lower().startswith("explicit"):
            inference.implicit_batch = False
            if shapes:
                lead = shapes[0][1].split("x")[0]
                if lead.isdigit():
                    inference.batch = int(lead)
        if inference.implicit_batch and (inference.batch or 1) > 1:
            self.notes.append(
                f"implicit batch {inference.batch}: trtexec counts each batch item as a query, so "
                "throughput_qps is samples/s, not inferences/s"
            )
        return inference

    def _resolve_transfers(self, low_cmd: list[str], series: dict[str, Stats], major: int | None) -> bool | None:
        """Whether the latency includes H2D/D2H: printed option, command-line flag, the
        printed transfer times, the release default (off from TRT 11), TRT 7 (always on)."""
        if "Data transfers" in self.onoff:
            return self.onoff["Data transfers"]
        if "--noDataTransfers" in low_cmd:
            return False
        if "--includeDataTransfers" in low_cmd:
            return True
        h2d, d2h = series.get("h2d"), series.get("d2h")
        if h2d is not None and h2d.max is not None:
            return h2d.max > 0 or (d2h is not None and (d2h.max or 0) > 0)
        if major is not None:
            return major < 11
        if self.summary_format == "legacy-multiline":
            return True
        return None

    def _resolve_trt11_defaults(
        self, inference: _Inference, cmd_tokens: list[str], series: dict[str, Stats], major: int | None
    ) -> None:
        """Data transfers, CUDA graphs and spin-wait (TRT 11 changed all three defaults)."""
        low_cmd = [t.split("=", 1)[0] for t in cmd_tokens]
        transfers = self._resolve_transfers(low_cmd, series, major)
        inference.latency_includes_transfers = transfers
        inference.cuda_graph = _on_by_default(self.onoff, "CUDA Graph", "--useCudaGraph", low_cmd, major)
        inference.spin_wait = _on_by_default(self.onoff, "Spin-wait", "--useSpinWait", low_cmd, major)
        if major is not None and major >= 11:
            self.notes.append(_TRT11_NOTE)
        if transfers is False:
            self.notes.append("Latency excludes H2D/D2H transfers (data transfers disabled)")

    def _note_missing_latency(self) -> None:
        """Say why there is no latency when neither summary form was printed."""
        if self.stats or self.legacy:
            return
        if self.e2e_not_reported:
            self.notes.append(
                "latency missing: no performance summary because the profiler was enabled "
                "(--dumpProfile without --separateProfileRun)"
            )
        else:
            self.notes.append("latency missing: no performance summary in this text")
