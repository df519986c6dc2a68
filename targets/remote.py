"""Target ``cpu`` on another machine: ``--target cpu --device user@host[:port]``.

The same measurement as :mod:`targets.cpu`, run on the device through :mod:`targets.ssh`:
the ONNX files and ``targets/ort_worker.py`` (self-contained: numpy + onnxruntime) are copied
to a per-call remote folder, the worker runs there under ``remote_python`` in a fresh process
per measurement, and its JSON line comes back. Records have the same keys as
:meth:`targets.cpu.CpuTarget.measure`; ``measured_on`` names the device.

Latency and memory are measured on the device. Accuracy (``runner``) runs through ONNX Runtime
on *this* machine: the same graph and the same CPU execution provider, but not the device's
own build of ONNX Runtime.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, StageError
from targets.base import Engine, MeasureSettings
from targets.ort_runner import OrtRunner
from targets.ssh import Address, SshSession, SshSettings
from targets.stats import interleaved_records

log = logging.getLogger("pipeline.remote")

WORKER = Path(__file__).resolve().parent / "ort_worker.py"
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


class RemoteCpuTarget:
    """ONNX Runtime CPU EP on a device reached over SSH (see the module docstring)."""

    name = "cpu"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.address = Address.parse(str(options["device"]))
        self.settings = SshSettings.from_options(options)
        self.python = str(options.get("remote_python") or "python3")
        self.optimization = str(options.get("graph_optimization", "all"))
        self._info: dict | None = None

    def session(self) -> SshSession:
        return SshSession(self.address, self.settings)

    def _probe(self, s: SshSession) -> dict:
        if self._info is None:
            r = s.run([self.python, "-c", PROBE], 120, check=False)
            info = _last_json(r.stdout)
            if r.returncode == 127 or info is None:
                raise StageError(f"cannot run {self.python} on {self.address} (exit {r.returncode}): "
                                 f"{(r.stderr.strip().splitlines() or ['no output'])[-1]}",
                                 hint="install Python 3 on the device or set target option remote_python")
            if "error" in info:
                raise StageError(f"onnxruntime is not importable by {self.python} on {self.address}: {info['error']}",
                                 hint=f"on the device: {self.python} -m pip install onnxruntime numpy "
                                      "(or set target option remote_python to a Python that has it)")
            self._info = info
        return self._info

    def describe(self, threads: int | None = None) -> str:
        info = self._info or {}
        t = threads or info.get("physical_cores", "?")
        return (f"cpu over ssh {self.address}: onnxruntime {info.get('onnxruntime', '?')} CPUExecutionProvider, "
                f"{t} threads, {info.get('cpu') or info.get('machine', '?')}")

    def _spawn(self, s: SshSession, args: dict) -> dict:
        r = s.run([self.python, "ort_worker.py", json.dumps(args)], self.settings.command_timeout_s or WORKER_TIMEOUT_S,
                  check=False)
        out = _last_json(r.stdout)
        if r.returncode != 0 or out is None:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise StageError(f"measurement process on {self.address} failed (exit {r.returncode}): {tail}",
                             hint="see logs/pipeline.log; run the same model with --target cpu locally to compare")
        if "error" in out:
            raise StageError(f"measurement on {self.address} failed: {out['error']}",
                             hint="check the model loads with the device's onnxruntime version")
        return out

    @staticmethod
    def _remote_names(engines: Sequence[Engine]) -> list[str]:
        return [f"m{i}.onnx" for i in range(len(engines))]

    def build(self, onnx_path: Path, sample_shape: tuple[int, ...], out_dir: Path) -> Engine:
        """Copy the model to the device and load it there once (fails early on an unusable device)."""
        t0 = time.perf_counter()
        with self.session() as s:
            info = self._probe(s)
            s.put(WORKER, "ort_worker.py")
            s.put(Path(onnx_path), "m0.onnx")
            self._spawn(s, {"mode": "memory", "model": s.path("m0.onnx"), "threads": info["physical_cores"],
                            "batch": 1, "sample_shape": list(sample_shape)})
        return Engine(self.name, Path(onnx_path), None, None, time.perf_counter() - t0, tuple(sample_shape),
                      {"runtime": f"onnxruntime {info['onnxruntime']} on {self.address}",
                       "device": str(self.address), "graph_optimization": self.optimization})

    def runner(self, engine: Engine) -> AbstractContextManager[OrtRunner]:
        """Accuracy through ONNX Runtime on this machine (same graph and EP; see module docstring)."""
        return OrtRunner(engine.onnx_path, optimization=self.optimization)

    def measure(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int = 1) -> list[dict]:
        """Same protocol and record as :meth:`targets.cpu.CpuTarget.measure`, on the device."""
        names = self._remote_names(engines)
        with self.session() as s:
            info = self._probe(s)
            threads = settings.threads or int(info["physical_cores"])
            s.put(WORKER, "ort_worker.py")
            for e, n in zip(engines, names):
                s.put(Path(e.onnx_path), n)
            shape = list(engines[0].sample_shape)
            lat = self._spawn(s, {
                "mode": "latency", "models": [s.path(n) for n in names], "threads": threads,
                "batch": settings.batch, "sample_shape": shape, "rounds": rounds, "warmup_s": settings.warmup_s,
                "min_duration_s": settings.min_duration_s, "min_iters": settings.min_iters,
            })
            empty = float(self._spawn(s, {"mode": "memory"})["peak_rss_mb"])
            peaks = [float(self._spawn(s, {"mode": "memory", "model": s.path(n), "threads": threads,
                                           "batch": settings.batch, "sample_shape": shape})["peak_rss_mb"])
                     for n in names]
        return interleaved_records(engines, lat, peaks, empty, settings.batch, threads, rounds,
                                   self.describe(threads))


def make_remote_cpu(options: Mapping[str, Any]) -> RemoteCpuTarget:
    if not options.get("device"):
        raise ConfigError("remote cpu target needs a device", hint="pass --device user@host[:port]")
    return RemoteCpuTarget(options)
