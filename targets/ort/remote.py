"""Target ``cpu`` on another machine: ``--target cpu --device user@host[:port]``.

The same measurement as :mod:`targets.ort.cpu`, run on the device through :mod:`targets.ssh`
(:class:`OrtOnDevice`, shared with the ``jetson`` target's ``runtime: ort``):
the ONNX files and ``targets/ort/worker.py`` (self-contained: numpy + onnxruntime) are copied
to a per-call remote folder, the worker runs there under ``remote_python`` in a fresh process
per measurement, and its JSON line comes back. Records have the same keys as
:meth:`targets.ort.cpu.CpuTarget.measure`; ``measured_on`` names the device.

Latency and memory are measured on the device. Accuracy (``runner``) runs through ONNX Runtime
on *this* machine: the same graph and the same CPU execution provider, but not the device's
own build of ONNX Runtime.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from core.errors import ConfigError, StageError
from targets.base import Engine, MeasureSettings
from targets.ort.runner import OrtRunner
from targets.ssh import Address, Device, SshSession, SshSettings
from targets.timing import timing_records

log = logging.getLogger("pipeline.remote")

WORKER = Path(__file__).resolve().parent / "worker.py"
TIMING = Path(__file__).resolve().parents[1] / "timing.py"  # the worker's timing protocol, copied beside it
WORKER_TIMEOUT_S = 600

# Runs under the device's Python: what the record's measured_on needs, and a check that
# onnxruntime is importable there.
PROBE = r"""
import json, os, platform
out = {"python": platform.python_version(), "machine": platform.machine(), "cpu": platform.processor()}
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name") or line.startswith("Model"):
            out["cpu"] = line.split(":", 1)[1].strip(); break
except OSError:
    pass
try:
    allowed = os.sched_getaffinity(0)
except AttributeError:
    allowed = set(range(os.cpu_count() or 1))
cores = set()
try:
    for c in allowed:
        p = "/sys/devices/system/cpu/cpu%d/topology/" % c
        cores.add((open(p + "physical_package_id").read().strip(), open(p + "core_id").read().strip()))
    out["physical_cores"] = max(1, len(cores))
except OSError:
    out["physical_cores"] = max(1, len(allowed))
try:
    import onnxruntime
    out["onnxruntime"] = onnxruntime.__version__
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"""


def _last_json(stdout: str) -> dict | None:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return None
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return None


class OrtOnDevice:
    """ONNX Runtime's CPU EP measured on a device through any session of :mod:`targets.ssh`.

    The same worker, protocol and record as :mod:`targets.ort.cpu`, run wherever ``device.session()``
    runs commands: over SSH (``--device``) or on this machine (a Jetson measuring itself). The
    remote ``cpu`` target and the ``jetson`` target's ``runtime: ort`` both use it; the transport
    does not know which.

    Args:
        device: Where to run (:class:`targets.ssh.Device`).
        python: The device's Python with numpy and onnxruntime.
        optimization: ONNX Runtime's graph optimisation level, for the worker and the engine record.
    """

    def __init__(self, device: Device, python: str = "python3", optimization: str = "all") -> None:
        self.device = device
        self.python = python
        self.optimization = optimization
        self.info: dict | None = None

    def probe(self, s) -> dict:
        """Python version, CPU, physical cores and the onnxruntime version on the device (once)."""
        if self.info is None:
            r = s.run([self.python, "-c", PROBE], 120, check=False)
            info = _last_json(r.stdout)
            if r.returncode == 127 or info is None:
                raise StageError(f"cannot run {self.python} on {self.device.name} (exit {r.returncode}): "
                                 f"{(r.stderr.strip().splitlines() or ['no output'])[-1]}",
                                 hint="install Python 3 on the device or set target option remote_python")
            if "error" in info:
                raise StageError(f"onnxruntime is not importable by {self.python} on {self.device.name}: "
                                 f"{info['error']}",
                                 hint=f"on the device: {self.python} -m pip install onnxruntime numpy "
                                      "(or set target option remote_python to a Python that has it)")
            self.info = info
        return self.info

    def runtime(self, threads: int | None = None) -> str:
        info = self.info or {}
        t = threads or info.get("physical_cores", "?")
        return (f"onnxruntime {info.get('onnxruntime', '?')} CPUExecutionProvider, {t} threads, "
                f"{info.get('cpu') or info.get('machine', '?')}")

    def spawn(self, s, args: dict) -> dict:
        r = s.run([self.python, "ort_worker.py", json.dumps(args)],
                  self.device.settings.command_timeout_s or WORKER_TIMEOUT_S, check=False)
        out = _last_json(r.stdout)
        if r.returncode != 0 or out is None:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise StageError(f"measurement process on {self.device.name} failed (exit {r.returncode}): {tail}",
                             hint="see logs/pipeline.log; run the same model with --target cpu locally to compare")
        if "error" in out:
            raise StageError(f"measurement on {self.device.name} failed: {out['error']}",
                             hint="check the model loads with the device's onnxruntime version")
        return out

    def build(self, onnx_path: Path, sample_shape: tuple[int, ...]) -> tuple[float, dict]:
        """Copy the model to the device and load it there once (fails early on an unusable device)."""
        t0 = time.perf_counter()
        with self.device.session() as s:
            info = self.probe(s)
            s.put(WORKER, "ort_worker.py")
            s.put(TIMING, "timing.py")
            s.put(Path(onnx_path), "m0.onnx")
            self.spawn(s, {"mode": "memory", "model": s.path("m0.onnx"), "threads": info["physical_cores"],
                           "batch": 1, "sample_shape": list(sample_shape)})
        return time.perf_counter() - t0, info

    def measure(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int,
                measured_on: Callable[[int], str]) -> list[dict]:
        """Same protocol and record as :meth:`targets.ort.cpu.CpuTarget.measure`, on the device.

        ``measured_on(threads)`` names the device and runtime in the records.
        """
        names = [f"m{i}.onnx" for i in range(len(engines))]
        with self.device.session() as s:
            info = self.probe(s)
            threads = settings.threads or int(info["physical_cores"])
            s.put(WORKER, "ort_worker.py")
            s.put(TIMING, "timing.py")
            for e, n in zip(engines, names):
                s.put(Path(e.onnx_path), n)
            shape = list(engines[0].sample_shape)
            lat = self.spawn(s, {
                "mode": "latency", "models": [s.path(n) for n in names], "threads": threads,
                "optimization": self.optimization,
                "batch": settings.batch, "sample_shape": shape, "rounds": rounds, "warmup_s": settings.warmup_s,
                "min_duration_s": settings.min_duration_s, "min_iters": settings.min_iters,
            })
            empty = float(self.spawn(s, {"mode": "memory"})["peak_rss_mb"])
            peaks = [float(self.spawn(s, {"mode": "memory", "model": s.path(n), "threads": threads,
                                          "batch": settings.batch, "sample_shape": shape,
                                          "optimization": self.optimization})["peak_rss_mb"])
                     for n in names]
        return timing_records(engines, lat, batch=settings.batch, rounds=rounds, measured_on=measured_on(threads),
                              memory_mb=[max(0.0, p - empty) for p in peaks], threads=threads, peak_rss_mb=peaks,
                              empty_rss_mb=empty)


class RemoteCpuTarget:
    """ONNX Runtime CPU EP on a device reached over SSH (see the module docstring)."""

    name = "cpu"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.address = Address.parse(str(options["device"]))
        self.settings = SshSettings.from_options(options)
        self.python = str(options.get("remote_python") or "python3")
        self.optimization = str(options.get("graph_optimization", "all"))
        self.ort = OrtOnDevice(Device(self.address, self.settings), self.python, self.optimization)

    def session(self) -> SshSession:
        return SshSession(self.address, self.settings)

    def describe(self, threads: int | None = None) -> str:
        return f"cpu over ssh {self.address}: {self.ort.runtime(threads)}"

    def build(self, onnx_path: Path, sample_shape: tuple[int, ...], out_dir: Path) -> Engine:
        """Copy the model to the device and load it there once (fails early on an unusable device)."""
        build_s, info = self.ort.build(onnx_path, sample_shape)
        return Engine(self.name, Path(onnx_path), None, None, build_s, tuple(sample_shape),
                      {"runtime": f"onnxruntime {info['onnxruntime']} on {self.address}",
                       "device": str(self.address), "graph_optimization": self.optimization})

    def runner(self, engine: Engine) -> AbstractContextManager[OrtRunner]:
        """Accuracy through ONNX Runtime on this machine (same graph and EP; see module docstring)."""
        return OrtRunner(engine.onnx_path, optimization=self.optimization)

    def measure(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int = 1) -> list[dict]:
        """Same protocol and record as :meth:`targets.ort.cpu.CpuTarget.measure`, on the device."""
        return self.ort.measure(engines, settings, rounds, self.describe)


def make_remote_cpu(options: Mapping[str, Any]) -> RemoteCpuTarget:
    if not options.get("device"):
        raise ConfigError("remote cpu target needs a device", hint="pass --device user@host[:port]")
    return RemoteCpuTarget(options)
