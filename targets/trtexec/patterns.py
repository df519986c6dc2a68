"""The grammar of a ``trtexec`` console log: regular expressions and lookup tables.

One constant per kind of line :mod:`targets.trtexec.log` reads (banner, summary items of each
TensorRT release family, device block, engine and memory sizes, options); the parser decides
which of them apply to a line. Only the Python standard library is used.
"""

from __future__ import annotations

import re

from targets.trtexec.records import MIB

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf"

# "[03/07/2022-05:12:53] [I] " prefix; both parts optional.
PREFIX_RE = re.compile(
    r"^\s*(?:\[\d{1,2}/\d{1,2}/\d{2,4}-\d{1,2}:\d{2}:\d{2}\]\s*)?(?:\[(?P<lvl>[IWEVF])\]\s?)?"
)
BANNER_RE = re.compile(
    r"&&&& (?P<status>RUNNING|PASSED|FAILED|WAIVED) TensorRT\.trtexec"
    r"(?:\s*\[TensorRT v(?P<ver>\d+)\])?(?:\s*\[b\d+\])?\s*(?:#\s*(?P<cmd>.*))?$"
)
VERSION_LINE_RE = re.compile(r"^TensorRT version:\s*(?P<v>\d+(?:\.\d+)*)\s*$")
STATS_LINE_RE = re.compile(
    r"^(?P<label>Latency|End-to-End Host Latency|Enqueue Time|H2D Latency|GPU Compute Time"
    r"|D2H Latency):\s*(?P<body>(?:min|max|mean|median|percentile)\b.*)$"
)
STAT_ITEM_RE = re.compile(
    rf"(?P<key>min|max|mean|median|percentile\((?P<pct>[\d.]+)%\))\s*=\s*(?P<val>{NUM})\s*ms"
)
THROUGHPUT_RE = re.compile(rf"^Throughput:\s*(?P<v>{NUM})\s*qps\b")
WALLTIME_RE = re.compile(rf"^Total Host Walltime:\s*(?P<v>{NUM})\s*s\b")
TOTAL_GPU_RE = re.compile(rf"^Total GPU Compute Time:\s*(?P<v>{NUM})\s*s\b")
COV_RE = re.compile(rf"coefficient of variance\s*=\s*(?P<v>{NUM})\s*%")
TRACE_RE = re.compile(rf"^Timing trace has (?P<n>\d+) queries over (?P<s>{NUM}) s")

# Legacy (TRT <= 7) multi-line summary.
LEGACY_HEADERS = {
    "Host Latency": "latency",
    "Enqueue Time": "enqueue",
    "GPU Compute": "gpu_compute",
    "GPU Compute Time": "gpu_compute",
    "H2D Latency": "h2d",
    "D2H Latency": "d2h",
}
LEGACY_STAT_RE = re.compile(
    rf"^(?P<key>min|max|mean|median):\s*(?P<v>{NUM})\s*ms(?:\s*\(end to end (?P<e2e>{NUM})\s*ms\))?$"
)
LEGACY_PCT_RE = re.compile(
    rf"^percentile:\s*(?P<v>{NUM})\s*ms at (?P<pct>[\d.]+)%"
    rf"(?:\s*\(end to end (?P<e2e>{NUM})\s*ms at [\d.]+%\))?$"
)
LEGACY_THROUGHPUT_RE = re.compile(rf"^throughput:\s*(?P<v>{NUM})\s*qps\b")
LEGACY_WALLTIME_RE = re.compile(rf"^walltime:\s*(?P<v>{NUM})\s*s\b")
LEGACY_TOTAL_RE = re.compile(rf"^total compute time:\s*(?P<v>{NUM})\s*s\b")

SIZE_UNITS = {
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
CREATED_ENGINE_RE = re.compile(rf"^Created engine with size:\s*(?P<v>{NUM})\s*(?P<u>[KMG]i?B|bytes)?")
LOADED_ENGINE_RE = re.compile(rf"^Loaded engine size:\s*(?P<v>{NUM})\s*(?P<u>[KMG]i?B|bytes)?")
CTX_MEM_RE = re.compile(
    rf"^Created execution context with device memory size:\s*(?P<v>{NUM})\s*(?P<u>[KMG]i?B|bytes)?"
)
ACT_MEM_RE = re.compile(rf"^Total Activation Memory:\s*(?P<v>{NUM})\s*(?P<u>[KMG]i?B|bytes)?\s*$")
CTX_ALLOC_RE = re.compile(
    r"TensorRT-managed allocation in IExecutionContext creation:.*?GPU \+(?P<v>\d+)"
)
VERBOSE_ALLOC_RE = re.compile(
    r"^Allocated (?:activation device|device scratch) memory of size (?P<v>\d+)"
)
BUILT_RE = re.compile(rf"^Engine built in (?P<v>{NUM})\s*sec")
DESER_RE = re.compile(rf"^Engine deserialized in (?P<v>{NUM})\s*sec")
DEVICE_RE = re.compile(r"^Selected Device:\s*(?P<v>.+?)\s*$")
DEVICE_LIST_RE = re.compile(r'^Device \d+:\s*"(?P<v>[^"]+)"')
CC_RE = re.compile(r"^Compute Capability:\s*(?P<v>[\d.]+)")
PRECISION_RE = re.compile(r"^Precision:\s*(?P<v>\S.*?)\s*$")
BATCH_RE = re.compile(r"^Batch:\s*(?P<v>\S+)")
SHAPE_OPT_RE = re.compile(r"^Input inference shapes?\s*:\s*(?P<v>.+?)\s*$")
BINDING_RE = re.compile(
    r"^(?:Created input binding for (?P<a>.+?) with dimensions (?P<ad>[\dx]+)"
    r"|Input binding for (?P<b>.+?) with dimensions (?P<bd>[\dx]+)\b)"
)
ONOFF_RE = re.compile(r"^(?P<k>Data transfers|CUDA Graph|Spin-wait):\s*(?P<v>Enabled|Disabled)\b")
PROFILE_HDR_RE = re.compile(r"^=== Profile \((?P<n>\d+) iterations\s*\) ===")
E2E_NOT_REPORTED = "The e2e network timing is not reported"

# Single-line (TRT 8+) and multi-line (TRT <= 7) summary scalars: pattern -> RunState field.
SUMMARY_SCALARS = (
    (THROUGHPUT_RE, "throughput_qps"),
    (WALLTIME_RE, "total_host_walltime_s"),
    (TOTAL_GPU_RE, "total_gpu_compute_s"),
)
LEGACY_SCALARS = (
    (LEGACY_THROUGHPUT_RE, "throughput_qps"),
    (LEGACY_WALLTIME_RE, "total_host_walltime_s"),
    (LEGACY_TOTAL_RE, "total_gpu_compute_s"),
)
# Size lines: pattern -> RunState field, unit assumed when none is printed (None: bytes).
SIZE_LINES = (
    (CREATED_ENGINE_RE, "created_engine", "MiB"),
    (LOADED_ENGINE_RE, "loaded_engine", "MiB"),
    (CTX_MEM_RE, "ctx_mem", "MiB"),
    (ACT_MEM_RE, "act_mem", None),  # last one wins (final plan)
)

PRECISION_FLAGS = ("fp16", "bf16", "int8", "fp8", "int4", "best")

# Field of TrtexecRun for each single-line summary label (TRT 8+).
LABEL_FIELD = {
    "Latency": "latency",
    "End-to-End Host Latency": "end_to_end",
    "Enqueue Time": "enqueue",
    "H2D Latency": "h2d",
    "GPU Compute Time": "gpu_compute",
    "D2H Latency": "d2h",
}

# Markers that make a text trtexec output (any one is enough).
TRTEXEC_PROBES = (
    r"&&&& (?:RUNNING|PASSED|FAILED) TensorRT\.trtexec",
    r"=== Performance summary ===",
    r"=== (?:Model|Build|System|Inference|Reporting) Options ===",
    r"\[TRT\]",
    r"GPU Compute Time:\s*min\s*=",
    r"^\s*(?:\[[^\]]*\]\s*)*Host Latency\s*$",
    r"=== Profile \(\d+ iterations",
    r"TensorRT version:\s*\d",
)
