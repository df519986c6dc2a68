"""Target ``cpu``: ONNX Runtime, CPU execution provider, graph optimisation ALL.

Latency and memory are measured in a fresh Python process per measurement
(:mod:`targets.ort.worker`), so the peak RSS belongs to the model and no state of the parent
(torch's OpenMP pool, caches) leaks into the numbers. Several engines measured together are
interleaved round by round (A B A B ...), so that a ratio between them is taken under the same
machine conditions.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from core.errors import StageError
from targets.base import Engine, MeasureSettings
from targets.ort.runner import OrtRunner
from targets.timing import timing_records

WORKER_TIMEOUT_S = 300


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads counted once)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    try:
        for cpu in allowed:
            p = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((p / "physical_package_id").read_text().strip(), (p / "core_id").read_text().strip()))
    except OSError:
        return max(1, len(allowed))
    return max(1, len(cores))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ort_version() -> str:
    from importlib.metadata import version

    return version("onnxruntime")


class CpuTarget:
    name = "cpu"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.optimization = str(options.get("graph_optimization", "all"))
        self._empty_rss: float | None = None

    def describe(self, threads: int | None = None) -> str:
        t = threads or physical_cores()
        return f"cpu: onnxruntime {_ort_version()} CPUExecutionProvider, {t} threads, {cpu_name()}"

    def build(self, onnx_path: Path, sample_shape: tuple[int, ...], out_dir: Path) -> Engine:
        """ORT builds its optimised graph in memory: check the session loads and time it."""
        t0 = time.perf_counter()
        try:
            with OrtRunner(onnx_path, optimization=self.optimization):
                pass
        except Exception as e:  # noqa: BLE001
            raise StageError(f"ONNX Runtime cannot load {onnx_path.name}: {e}",
                             hint="check the export opset; see logs/ for the full error") from None
        return Engine(self.name, Path(onnx_path), None, None, time.perf_counter() - t0, tuple(sample_shape),
                      {"runtime": f"onnxruntime {_ort_version()}", "graph_optimization": self.optimization})

    def runner(self, engine: Engine) -> AbstractContextManager[OrtRunner]:
        return OrtRunner(engine.onnx_path, optimization=self.optimization)

    def _spawn(self, args: dict) -> dict:
        env = dict(os.environ)
        # the worker must not inherit thread settings meant for torch in the parent
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(k, None)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        try:
            # cwd=root: `-m` puts the working directory first on sys.path, so a json.py (or numpy.py) where the
            # user happens to be would be imported by the worker; our own root is the one safe choice there
            proc = subprocess.run([sys.executable, "-m", "targets.ort.worker", json.dumps(args)], cwd=root,
                                  capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise StageError(f"measurement of {args.get('model')} exceeded {WORKER_TIMEOUT_S}s",
                             hint="lower measure.min_duration_s") from None
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise StageError(f"measurement process failed (exit {proc.returncode}): {tail}",
                             hint="run `pipeline measure MODEL.onnx` to reproduce")
        out = json.loads(lines[-1])
        if "error" in out:
            raise StageError(f"measurement failed: {out['error']}", hint="run `pipeline measure MODEL.onnx` to reproduce")
        return out

    def empty_rss_mb(self) -> float:
        """Peak RSS of a process that imports the runtime and loads no model (measured once)."""
        if self._empty_rss is None:
            self._empty_rss = float(self._spawn({"mode": "memory"})["peak_rss_mb"])
        return self._empty_rss

    def measure(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int = 1) -> list[dict]:
        """Measure engines together: latency interleaved in one fresh process, memory one process each.

        Returns one record per engine: latency stats over all samples (ms), per-round medians,
        throughput (samples/s), peak RSS, and ``memory_mb`` = peak RSS growth over a process that
        only imported the runtime. With two or more engines, ``ratio_to_first`` is the median over
        rounds of (first engine's round median / this engine's round median): the speedup,
        measured under the same machine conditions.
        """
        threads = settings.threads or physical_cores()
        shape = list(engines[0].sample_shape)
        lat = self._spawn({
            "mode": "latency", "models": [str(Path(e.onnx_path).resolve()) for e in engines], "threads": threads,
            "optimization": self.optimization,
            "batch": settings.batch, "sample_shape": shape, "rounds": rounds, "warmup_s": settings.warmup_s,
            "min_duration_s": settings.min_duration_s, "min_iters": settings.min_iters,
        })
        empty = self.empty_rss_mb()
        peaks = [float(self._spawn({"mode": "memory", "model": str(Path(e.onnx_path).resolve()), "threads": threads,
                                    "batch": settings.batch, "sample_shape": shape,
                                    "optimization": self.optimization})["peak_rss_mb"]) for e in engines]
        return timing_records(engines, lat, batch=settings.batch, rounds=rounds, measured_on=self.describe(threads),
                              memory_mb=[max(0.0, p - empty) for p in peaks], threads=threads, peak_rss_mb=peaks,
                              empty_rss_mb=empty)
