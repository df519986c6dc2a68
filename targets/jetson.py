"""Target ``jetson``: build and measure with ``trtexec`` (+ ``tegrastats``) on a Jetson.

Two ways to reach the device, one code path (:mod:`targets.ssh`):

- ``--device user@host[:port]``: from a host (an x86 CI runner) over SSH;
- no ``--device``, on the Jetson itself: the same commands through a local session.

Per build: probe the device once (module, L4T -> JetPack, ``nvpmodel -q`` mode name,
``jetson_clocks --show``, the trtexec banner's TensorRT version), copy the ONNX (and the timing
cache) to a per-call folder, run ``trtexec --onnx ... --saveEngine --timingCacheFile
--skipInference`` with precision flags for TRT <= 10 (none on TRT >= 11, strongly typed), fetch
the plan, save it plain with a sidecar JSON.

Per measurement: copy the plans, then for each round and engine (interleaved) run
``trtexec --loadEngine ... --exportTimes`` with ``tegrastats --interval 100 --logfile`` beside it,
fetch the JSON and the log, and parse them with :mod:`targets.trtexec_log` and
:mod:`targets.tegrastats`. Latency is the per-inference ``computeMs`` of ``--exportTimes``
(GPU compute; the same meaning on TRT 10 and 11); memory comes from trtexec's execution-context
device memory, else tegrastats' RAM growth (unified memory).

Accuracy (``runner``) runs through the measured engine on the device by default
(:mod:`targets.trtexec_infer`: ``trtexec --loadInputs / --exportOutput`` on real inputs, chunked to
the engine's batch), so an FP16 / INT8 loss on the device counts against the accuracy floor.
``accuracy_on: host`` evaluates the ONNX with ONNX Runtime on the host instead (FP32; faster where
the engine's batch is 1). Every record says which (``accuracy_on``).

``runtime: ort`` measures without TensorRT: the ``cpu`` target's ONNX Runtime worker
(:class:`targets.remote.OrtOnDevice`, CPU execution provider) runs on the device through the same
session, next to the same probe (module, L4T, power mode, clocks; trtexec is not required). It is
for a Jetson whose container has no TensorRT, and for Raspberry Pi-class boards. TensorRT builder
options are refused with it, and the device need not be a Jetson (a warning says when it does
not look like one).
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError, StageError
from core.io import atomic_write_bytes, sha256_file
from targets.base import Engine, MeasureSettings
from targets.devices import (
    DeviceProfile,
    detect_profile,
    get_profile,
    jetpack_for_l4t,
    parse_jetson_clocks,
    parse_nv_tegra_release,
    parse_nvpmodel,
    tensorrt_for_l4t,
    trt_major,
    trt_tuple,
)
from targets.ort_runner import OrtRunner
from targets.ssh import Address, Device, SshSettings
from targets.stats import latency_stats
from targets.tensorrt import (
    OnnxFacts,
    PrecisionPlan,
    TrtSettings,
    batch_profile,
    onnx_facts,
    precision_plan,
    timing_cache_key,
)

log = logging.getLogger("pipeline.jetson")

DEFAULT_REMOTE_PATH = ("/usr/src/tensorrt/bin",)  # where JetPack installs trtexec (not on PATH)
RUNTIMES = ("trtexec", "ort")
TRT_ONLY_OPTIONS = ("precision", "workspace_mb", "dla_core", "sparsity", "max_batch", "timing_cache_dir",
                    "accuracy_on")
ACCURACY_ON = ("device", "host")
EVAL_BATCH = 32  # images per trtexec call when accuracy is taken through the device engine
DEFAULT_COMMAND_TIMEOUT_S = 3600.0  # engine builds on an Orin Nano take many minutes

PROBE_SCRIPT = r"""
echo '@@model'; tr -d '\000' < /proc/device-tree/model 2>/dev/null; echo
echo '@@nv_tegra_release'; cat /etc/nv_tegra_release 2>/dev/null
echo '@@meminfo'; grep MemTotal /proc/meminfo 2>/dev/null
echo '@@nvpmodel'; nvpmodel -q 2>&1
echo '@@jetson_clocks'; { sudo -n jetson_clocks --show 2>/dev/null || jetson_clocks --show; } 2>&1
echo '@@trtexec'; command -v trtexec && trtexec --help 2>&1 | head -n 3
echo '@@tegrastats'; command -v tegrastats
echo '@@end'
"""


# --------------------------------------------------------------------------- device facts


@dataclass(frozen=True)
class DeviceInfo:
    """What the probe learnt about the device."""

    model: str | None = None
    l4t: str | None = None
    jetpack: str | None = None
    mem_total_mb: float | None = None
    power_mode: str | None = None
    power_mode_id: int | None = None
    clocks_locked: bool | None = None
    trt_version: str | None = None
    trt_version_source: str | None = None
    trtexec: str | None = None
    tegrastats: str | None = None

    def warnings(self) -> list[str]:
        out = []
        if self.clocks_locked is False:
            out.append("clocks are not locked: run `sudo jetson_clocks` on the device for stable numbers")
        elif self.clocks_locked is None:
            out.append("could not read the clock state (jetson_clocks --show needs root): "
                       "lock clocks with `sudo jetson_clocks` before measuring")
        if self.power_mode is None:
            out.append("power mode unknown (nvpmodel -q gave nothing): results are not tied to a mode")
        if self.tegrastats is None:
            out.append("tegrastats not found: no RAM / power samples during measurement")
        return out


def _sections(text: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("@@") and line[2:].strip().replace("_", "").isalnum():
            cur = line[2:].strip()
            out[cur] = []
        elif cur is not None:
            out[cur].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def parse_probe(text: str) -> DeviceInfo:
    """Parse the output of :data:`PROBE_SCRIPT`."""
    from targets.trtexec_log import decode_trt_version

    s = _sections(text)
    l4t = parse_nv_tegra_release(s.get("nv_tegra_release", ""))
    jp = jetpack_for_l4t(l4t)
    mem = None
    for ln in s.get("meminfo", "").splitlines():
        parts = ln.split()
        if len(parts) >= 2 and parts[0] == "MemTotal:" and parts[1].isdigit():
            mem = int(parts[1]) / 1024.0
    pm = parse_nvpmodel(s.get("nvpmodel", ""))
    clocks = parse_jetson_clocks(s.get("jetson_clocks", ""))
    trt_lines = s.get("trtexec", "").splitlines()
    trtexec = trt_lines[0].strip() if trt_lines and trt_lines[0].startswith("/") else None
    trt_version, source = None, None
    for ln in trt_lines:
        m = re.search(r"TensorRT\.trtexec\s*\[TensorRT v(\d+)\]", ln)
        if m:
            trt_version, source = decode_trt_version(m.group(1)), "trtexec banner"
            break
    if trt_version is None and l4t:
        trt_version = tensorrt_for_l4t(l4t)
        source = f"JetPack table for L4T {l4t}" if trt_version else None
    teg = s.get("tegrastats", "").strip()
    return DeviceInfo(
        model=s.get("model") or None, l4t=l4t, jetpack=jp.jetpack if jp else None, mem_total_mb=mem,
        power_mode=pm.name or clocks.power_mode, power_mode_id=pm.mode_id, clocks_locked=clocks.locked,
        trt_version=trt_version, trt_version_source=source, trtexec=trtexec,
        tegrastats=teg.splitlines()[0] if teg.startswith("/") else None)


# --------------------------------------------------------------------------- trtexec commands


def tensor_arg(name: str) -> str:
    """A tensor name as trtexec's ``--shapes`` / ``--loadInputs`` want it (quoted when it holds ``:`` or ``,``)."""
    return f"'{name}'" if ":" in name or "," in name else name


def shape_arg(name: str, dims: Sequence[int]) -> str:
    """``NAME:AxBxC`` for trtexec's shape options."""
    return f"{tensor_arg(name)}:{'x'.join(str(int(d)) for d in dims)}"


@dataclass(frozen=True)
class BuildCommand:
    """Everything that decides a ``trtexec`` build command line."""

    trt_version: str
    onnx: str
    engine: str
    timing_cache: str
    plan: PrecisionPlan
    facts: OnnxFacts
    sample_shape: tuple[int, ...]
    settings: TrtSettings = field(default_factory=TrtSettings)

    def argv(self, trtexec: str = "trtexec") -> list[str]:
        v = trt_tuple(self.trt_version)
        a = [trtexec, f"--onnx={self.onnx}", f"--saveEngine={self.engine}", f"--timingCacheFile={self.timing_cache}",
             "--skipInference"]
        if not self.plan.strongly_typed:  # TRT <= 10: weakly typed, precision by flag
            a += [f"--{f.lower()}" for f in self.plan.builder_flags]
        elif trt_major(self.trt_version) == 10:
            a.append("--stronglyTyped")
        if self.facts.dynamic_batch:
            lo, opt, hi = batch_profile(self.sample_shape, self.settings.max_batch)
            name = self.facts.input_name
            a += [f"--minShapes={shape_arg(name, lo)}", f"--optShapes={shape_arg(name, opt)}",
                  f"--maxShapes={shape_arg(name, hi)}"]
        if self.settings.workspace_mb:
            a.append(f"--memPoolSize=workspace:{self.settings.workspace_mb}" if v >= (8, 4)
                     else f"--workspace={self.settings.workspace_mb}")
        if self.settings.dla_core is not None:
            a += [f"--useDLACore={self.settings.dla_core}", "--allowGPUFallback"]
        if self.settings.sparsity:
            a.append("--sparsity=enable")
        return a


def measure_argv(trt_version: str, engine: str, times_json: str, facts: OnnxFacts, sample_shape: Sequence[int],
                 batch: int, settings: MeasureSettings, dla_core: int | None = None,
                 trtexec: str = "trtexec") -> list[str]:
    """``trtexec --loadEngine`` measurement; ``--exportTimes`` gives per-inference times as JSON.

    TRT 11 turned data transfers off and CUDA graphs / spin-wait on by default; the primary
    latency (``computeMs``) excludes transfers either way, and TRT <= 10 gets ``--useSpinWait``.
    """
    a = [trtexec, f"--loadEngine={engine}", f"--exportTimes={times_json}",
         f"--warmUp={max(0, round(settings.warmup_s * 1000))}",
         f"--duration={max(1, math.ceil(settings.min_duration_s))}", f"--iterations={max(1, settings.min_iters)}"]
    if facts.dynamic_batch:
        a.append(f"--shapes={shape_arg(facts.input_name, (batch, *sample_shape))}")
    if (trt_major(trt_version) or 0) < 11:
        a.append("--useSpinWait")
    if dla_core is not None:
        a.append(f"--useDLACore={dla_core}")
    return a


def tegrastats_argv(logfile: str, interval_ms: int = 100) -> list[str]:
    return ["tegrastats", "--interval", str(int(interval_ms)), "--logfile", logfile]


def check_profile_options(profile: DeviceProfile, settings: TrtSettings, trt_version: str | None = None) -> None:
    """Reject settings the module cannot honour (DLA cores, 2:4 sparsity, DLA on TRT 11.0-11.3)."""
    if settings.dla_core is not None:
        if profile.dla_cores == 0:
            raise ConfigError(f"{profile.module} has no DLA; dla_core {settings.dla_core} is not possible",
                              hint="drop dla_core (Orin Nano has no DLA)")
        if settings.dla_core >= profile.dla_cores:
            raise ConfigError(f"{profile.module} has {profile.dla_cores} DLA core(s); dla_core must be < "
                              f"{profile.dla_cores}, got {settings.dla_core}", hint="dla_core: 0")
        if trt_version and (11, 0) <= trt_tuple(trt_version) < (11, 4):
            raise ConfigError(f"DLA is not supported by TensorRT {trt_version}",
                              hint="use TensorRT 10.x (JetPack 6) for DLA on Orin")
    if settings.sparsity and not profile.sparse_2_4:
        raise ConfigError(f"{profile.module} ({profile.gpu_arch}) has no 2:4 sparse tensor cores (Ampere+ only)",
                          hint="drop sparsity for Xavier")


# --------------------------------------------------------------------------- the target


def _accuracy_on(options: Mapping[str, Any]) -> str:
    return str(options.get("accuracy_on") or "device").strip().lower()


def check_jetson_options(options: Mapping[str, Any]) -> str:
    """Check option values before anything runs; returns the runtime (``trtexec`` or ``ort``)."""
    from core.errors import did_you_mean

    runtime = str(options.get("runtime") or "trtexec").strip().lower()
    if runtime not in RUNTIMES:
        raise ConfigError(f"target option runtime '{options.get('runtime')}' is not one of {', '.join(RUNTIMES)}."
                          f"{did_you_mean(runtime, RUNTIMES)}", hint="runtime: trtexec | ort")
    if runtime == "ort":
        trt_only = [k for k in TRT_ONLY_OPTIONS if options.get(k) is not None]
        if trt_only:
            raise ConfigError(f"target option '{trt_only[0]}' applies to runtime trtexec; runtime ort measures the "
                              "ONNX as exported (fp32) with ONNX Runtime's CPU execution provider",
                              hint=f"drop {trt_only[0]}, or use runtime: trtexec")
    else:
        if options.get("remote_python") is not None:
            raise ConfigError("target option 'remote_python' applies to runtime ort (ONNX Runtime on the device)",
                              hint="add runtime: ort, or drop remote_python")
        TrtSettings.from_options(options)
        acc = _accuracy_on(options)
        if acc not in ACCURACY_ON:
            raise ConfigError(f"target option accuracy_on '{options.get('accuracy_on')}' is not one of "
                              f"{', '.join(ACCURACY_ON)}.{did_you_mean(acc, ACCURACY_ON)}",
                              hint="accuracy_on: device (through the engine, default) | host (ONNX Runtime here)")
    if options.get("device_profile"):
        get_profile(str(options["device_profile"]))
    return runtime


def _parse_times(path: Path) -> list[float]:
    """Per-inference ``computeMs`` from a ``--exportTimes`` JSON (validated by the shared parser)."""
    from targets.trtexec_log import load_trtexec_json

    summary = load_trtexec_json(path)
    if not hasattr(summary, "compute"):
        raise StageError(f"{path.name} is not a trtexec --exportTimes trace")
    data = json.loads(path.read_text())
    return [float(r["computeMs"]) for r in data if isinstance(r, dict) and "computeMs" in r]


class JetsonTarget:
    """trtexec + tegrastats on a Jetson, over SSH or on the device itself."""

    name = "jetson"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.runtime = check_jetson_options(options)
        dev = options.get("device")
        address = Address.parse(str(dev)) if dev else None
        if address is None and not Path("/etc/nv_tegra_release").exists():
            raise ConfigError("the jetson target needs a Jetson: this machine is not one (no /etc/nv_tegra_release)",
                              hint="pass --device user@host[:port] to build and measure on a Jetson over SSH")
        remote_path = options.get("remote_path")
        path = tuple(p for p in str(remote_path).split(":") if p) if remote_path else DEFAULT_REMOTE_PATH
        settings = SshSettings.from_options(options, command_timeout_s=DEFAULT_COMMAND_TIMEOUT_S,
                                            path_prepend=path)
        self.device = Device(address, settings)
        self.trt = TrtSettings.from_options(options) if self.runtime == "trtexec" else TrtSettings()
        self.accuracy_on = _accuracy_on(options) if self.runtime == "trtexec" else "host"
        self.profile = get_profile(options["device_profile"]) if options.get("device_profile") else None
        if self.profile is not None and self.runtime == "trtexec":
            check_profile_options(self.profile, self.trt)
        self._info: DeviceInfo | None = None
        self.ort = None
        if self.runtime == "ort":
            from targets.remote import OrtOnDevice

            self.ort = OrtOnDevice(self.device, str(options.get("remote_python") or "python3"))

    # -- device
    def info(self, session=None) -> DeviceInfo:
        """Probe the device once per target (module, versions, power mode, clocks)."""
        if self.runtime == "ort":
            return self._ort_info()
        if self._info is None:
            if session is None:
                with self.device.session() as s:
                    return self.info(s)
            r = session.run_shell(PROBE_SCRIPT, 120, check=False)
            info = parse_probe(r.stdout)
            if info.trtexec is None:
                raise StageError(f"trtexec not found on {self.device.name}",
                                 hint="JetPack puts it in /usr/src/tensorrt/bin (the default remote_path); "
                                      "install nvidia-tensorrt or set target option remote_path")
            if info.trt_version is None:
                raise StageError(f"cannot tell the TensorRT version on {self.device.name} (no trtexec banner, "
                                 "unknown L4T)", hint="check that `trtexec --help` runs on the device")
            detected = detect_profile(info.model, info.mem_total_mb)
            if self.profile is None:
                if detected is None:
                    raise ConfigError(f"cannot detect the Jetson module of {self.device.name} "
                                      f"(model {info.model!r})", hint="set target option device_profile, "
                                                                      "e.g. orin-nano-8gb")
                self.profile = detected
            elif detected is not None and detected.name != self.profile.name:
                log.warning("device_profile %s given, but the device looks like %s", self.profile.name, detected.name)
            check_profile_options(self.profile, self.trt, info.trt_version)
            for w in info.warnings():
                log.warning("%s: %s", self.device.name, w)
            self._info = info
        return self._info

    def _ort_info(self) -> DeviceInfo:
        """runtime ort: the same probe, best effort (no trtexec needed, any Linux device will do)."""
        if self._info is None:
            with self.device.session() as s:
                info = parse_probe(s.run_shell(PROBE_SCRIPT, 120, check=False).stdout)
            if self.profile is None:
                self.profile = detect_profile(info.model, info.mem_total_mb)
            if self.profile is None:
                log.warning("%s does not look like a Jetson (model %r): measuring with ONNX Runtime anyway",
                            self.device.name, info.model)
            for w in self._ort_warnings(info):
                log.warning("%s: %s", self.device.name, w)
            self._info = info
        return self._info

    def _ort_warnings(self, info: DeviceInfo) -> list[str]:
        out = [w for w in info.warnings() if not w.startswith("tegrastats")]  # tegrastats is not used by ort
        if self.profile is None:
            out.append(f"the device does not look like a Jetson (model {info.model!r}); no device profile")
        return out

    def describe(self, threads: int | None = None) -> str:
        i = self._info or DeviceInfo()
        module = self.profile.module if self.profile else "Jetson"
        clocks = {True: "clocks locked", False: "clocks NOT locked", None: "clock state unknown"}[i.clocks_locked]
        if self.runtime == "ort":
            module = self.profile.module if self.profile else "device (not identified as a Jetson)"
            assert self.ort is not None
            return (f"jetson {module} ({self.device.name}), runtime ort: {self.ort.runtime(threads)}; "
                    f"L4T {i.l4t or '?'}, power mode {i.power_mode or '?'}, {clocks}")
        return (f"jetson {module} ({self.device.name}): L4T {i.l4t or '?'} / JetPack {i.jetpack or '?'}, "
                f"TensorRT {i.trt_version or '?'} trtexec, power mode {i.power_mode or '?'}, {clocks}")

    # -- build
    def build(self, onnx_path: Path, sample_shape: tuple[int, ...], out_dir: Path) -> Engine:
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        if self.runtime == "ort":
            return self._build_ort(onnx_path, tuple(sample_shape))
        return self._build_trtexec(onnx_path, tuple(sample_shape), out_dir, self.trt)

    def _build_trtexec(self, onnx_path: Path, sample_shape: tuple[int, ...], out_dir: Path, trt: TrtSettings,
                       tag: str = "") -> Engine:
        facts = onnx_facts(onnx_path)
        t0 = time.perf_counter()
        with self.device.session() as s:
            info = self.info(s)
            assert self.profile is not None
            plan = precision_plan(info.trt_version, trt.precision, facts)
            shapes = ({facts.input_name: batch_profile(sample_shape, trt.max_batch)}
                      if facts.dynamic_batch else {})
            key = timing_cache_key(self.profile.module, self.profile.compute_capability, info.trt_version,
                                   plan.precision, shapes, extra=f"dla={trt.dla_core};sparse={trt.sparsity}")
            cache_dir = trt.timing_cache_dir or out_dir / "trt-cache"
            cache_local = cache_dir / f"{key}.cache"
            s.put(onnx_path, "model.onnx")
            if cache_local.is_file():
                s.put(cache_local, "timing.cache")
            cmd = BuildCommand(info.trt_version, s.path("model.onnx"), s.path("model.plan"), s.path("timing.cache"),
                               plan, facts, tuple(sample_shape), trt)
            argv = cmd.argv()
            r = s.run(argv, check=False)
            engine_name = f"{onnx_path.stem}.{self.profile.name}.{plan.precision}{tag}.plan"
            atomic_write_bytes(out_dir / "logs" / f"{engine_name}.build.log", (r.stdout + r.stderr).encode())
            if r.returncode != 0:
                raise StageError(f"trtexec could not build {onnx_path.name} on {self.device.name} "
                                 f"(exit {r.returncode}): {_tail(r.stdout + r.stderr)}",
                                 hint=f"full log: logs/{engine_name}.build.log")
            plan_path = s.get("model.plan", out_dir / engine_name)
            if s.exists("timing.cache"):
                s.get("timing.cache", cache_local)
        build_s = time.perf_counter() - t0
        built = _parse_log(r.stdout)
        if built is not None and built.trt_version and trt_major(built.trt_version) != trt_major(info.trt_version):
            log.warning("trtexec reported TensorRT %s, the probe said %s", built.trt_version, info.trt_version)
        meta = {
            "runtime": f"trtexec TensorRT {info.trt_version} on {self.device.name}", "device": self.device.name,
            "device_profile": self.profile.name, "module": self.profile.module, "l4t": info.l4t,
            "jetpack": info.jetpack, "tensorrt": info.trt_version, "precision": plan.precision,
            "strongly_typed": plan.strongly_typed, "precision_notes": list(plan.notes),
            "trtexec_argv": argv, "timing_cache_key": key, "timing_cache": str(cache_local),
            "trtexec_build_s": built.build_seconds if built else None, "power_mode": info.power_mode,
            "clocks_locked": info.clocks_locked, "onnx": str(onnx_path), "onnx_sha256": sha256_file(onnx_path),
            "input": facts.input_name, "dynamic_batch": facts.dynamic_batch, "max_batch": trt.max_batch,
            "dla_core": trt.dla_core, "sparsity": trt.sparsity,
        }
        atomic_write_bytes(Path(str(plan_path) + ".json"), json.dumps(meta, indent=2, default=str).encode())
        return Engine(self.name, onnx_path, plan_path, plan_path.stat().st_size, build_s, tuple(sample_shape), meta)

    def _build_ort(self, onnx_path: Path, sample_shape: tuple[int, ...]) -> Engine:
        """runtime ort: copy the ONNX and the worker, load it once on the device (fails early)."""
        assert self.ort is not None
        info = self._ort_info()
        build_s, ort_info = self.ort.build(onnx_path, sample_shape)
        meta = {"runtime": f"onnxruntime {ort_info['onnxruntime']} CPUExecutionProvider on {self.device.name}",
                "jetson_runtime": "ort", "device": self.device.name,
                "device_profile": self.profile.name if self.profile else None, "l4t": info.l4t,
                "jetpack": info.jetpack, "power_mode": info.power_mode, "clocks_locked": info.clocks_locked,
                "onnx": str(onnx_path), "precision": "fp32"}
        return Engine(self.name, onnx_path, None, None, build_s, sample_shape, meta)

    def runner(self, engine: Engine) -> AbstractContextManager:
        """Accuracy through the engine on the device (``accuracy_on: device``, runtime trtexec), else
        through ONNX Runtime on the host (FP32; see docs/jetson.md)."""
        if self.accuracy_on == "host" or engine.path is None:
            return OrtRunner(engine.onnx_path)
        from targets.trtexec_infer import TrtexecRunner

        info = self.info()
        if engine.meta.get("dynamic_batch") and self.trt.max_batch < EVAL_BATCH:
            engine = self._eval_engine(engine)
        return TrtexecRunner(self.device, Path(engine.path), Path(engine.onnx_path), info.trt_version or "",
                             int(engine.meta.get("max_batch") or 1), self.trt.dla_core,
                             Path(engine.path).parent / "logs")

    def _eval_engine(self, engine: Engine) -> Engine:
        """The measured engine's twin with a 1..EVAL_BATCH profile, for accuracy only.

        Same ONNX, TensorRT, precision, DLA and sparsity; only the batch profile differs, so an
        FP16 / INT8 loss shows as it does in the measured engine, without one trtexec start per
        image. Built once per ONNX (the sidecar's sha256 is checked) and kept next to the engine.
        """
        from dataclasses import replace

        path = Path(str(engine.path).removesuffix(".plan") + f".eval{EVAL_BATCH}.plan")
        side = Path(str(path) + ".json")
        onnx_sha = sha256_file(Path(engine.onnx_path))
        if path.is_file() and side.is_file():
            meta = json.loads(side.read_text())
            if meta.get("onnx_sha256") == onnx_sha:
                return Engine(self.name, Path(engine.onnx_path), path, path.stat().st_size, 0.0,
                              engine.sample_shape, meta)
        log.info("building an evaluation twin of %s with batch 1..%d (accuracy through the device engine)",
                 Path(engine.path).name, EVAL_BATCH)
        return self._build_trtexec(Path(engine.onnx_path), engine.sample_shape, Path(engine.path).parent,
                                   replace(self.trt, max_batch=EVAL_BATCH), tag=f".eval{EVAL_BATCH}")

    # -- measure
    def _measure_ort(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int) -> list[dict]:
        assert self.ort is not None
        info = self._ort_info()
        records = self.ort.measure(engines, settings, rounds, self.describe)
        for rec in records:
            rec.update({
                "runtime": "ort",
                "latency_source": "ONNX Runtime CPU EP on the device: perf_counter around InferenceSession.run, "
                                  "in a fresh worker process (targets/ort_worker.py)",
                "device": dict(asdict(info)), "device_profile": self.profile.name if self.profile else None,
                "precision": "fp32", "warnings": self._ort_warnings(info),
                "accuracy_on": "host: the ONNX through ONNX Runtime (fp32, the runtime measured on the device)",
                "notes": ["memory_mb: peak RSS growth of the worker process on the device (no tegrastats)"],
            })
        return records

    def measure(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int = 1) -> list[dict]:
        if self.runtime == "ort":
            return self._measure_ort(engines, settings, rounds)
        if settings.batch > self.trt.max_batch and any(e.meta.get("dynamic_batch") for e in engines):
            raise ConfigError(f"batch {settings.batch} is above the engine's max_batch {self.trt.max_batch}",
                              hint=f"set target option max_batch: {settings.batch} and rebuild")
        facts = [onnx_facts(Path(e.onnx_path)) for e in engines]
        samples: list[list[list[float]]] = [[] for _ in engines]
        last_log: list[Any] = [None] * len(engines)
        tegra: list[list[str]] = [[] for _ in engines]
        qps: list[list[float]] = [[] for _ in engines]
        with self.device.session() as s:
            info = self.info(s)
            names = [f"e{i}.plan" for i in range(len(engines))]
            for e, n in zip(engines, names):
                if e.path is None or not Path(e.path).is_file():
                    raise StageError(f"engine file of {Path(e.onnx_path).name} is missing", hint="build it first")
                s.put(Path(e.path), n)
            logs_dir = Path(engines[0].path).parent / "logs"
            for r in range(rounds):
                for i, e in enumerate(engines):
                    tag = f"r{r}-e{i}"
                    argv = measure_argv(info.trt_version, s.path(names[i]), s.path(f"times-{tag}.json"), facts[i],
                                        e.sample_shape, settings.batch, settings, self.trt.dla_core)
                    side = tegrastats_argv(s.path(f"tegra-{tag}.log")) if info.tegrastats else None
                    res = s.run(argv, sidecar=side, sidecar_log=f"tegra-{tag}.out", check=False)
                    stem = f"{Path(e.path).name}.{tag}"
                    atomic_write_bytes(logs_dir / f"{stem}.trtexec.log", (res.stdout + res.stderr).encode())
                    if res.returncode != 0:
                        raise StageError(f"trtexec failed to run {Path(e.path).name} on {self.device.name} "
                                         f"(exit {res.returncode}): {_tail(res.stdout + res.stderr)}",
                                         hint=f"full log: logs/{stem}.trtexec.log")
                    parsed = _parse_log(res.stdout)
                    last_log[i] = parsed
                    if parsed is not None and parsed.throughput_qps:
                        qps[i].append(parsed.throughput_qps)
                    if s.exists(f"times-{tag}.json"):
                        local = s.get(f"times-{tag}.json", logs_dir / f"{stem}.times.json")
                        samples[i].append(_parse_times(local))
                    elif parsed is not None and parsed.primary_latency is not None:
                        log.warning("no --exportTimes JSON from %s; using the console summary", self.device.name)
                        samples[i].append([parsed.primary_latency.median])
                    else:
                        raise StageError(f"no timing from trtexec on {self.device.name}",
                                         hint=f"see logs/{stem}.trtexec.log")
                    if side and s.exists(f"tegra-{tag}.log"):
                        tegra[i].append(s.get(f"tegra-{tag}.log", logs_dir / f"{stem}.tegrastats.log")
                                        .read_text(errors="replace"))
        return self._with_ratios([self._record(e, samples[i], last_log[i], tegra[i], qps[i], settings, rounds, info)
                                  for i, e in enumerate(engines)])

    @staticmethod
    def _with_ratios(records: list[dict]) -> list[dict]:
        first = records[0]["round_medians_ms"]
        for rec in records:
            ratios = [a / b for a, b in zip(first, rec["round_medians_ms"]) if b > 0]
            rec["ratio_to_first"] = statistics.median(ratios) if ratios else None
        return records

    def _record(self, engine: Engine, per_round: list[list[float]], parsed: Any, tegra_logs: list[str],
                qps: list[float], settings: MeasureSettings, rounds: int, info: DeviceInfo) -> dict:
        from targets.tegrastats import TegrastatsParseError, parse_tegrastats, summarize
        from targets.trtexec_log import to_measurement

        all_ms = [x for r in per_round for x in r]
        st = latency_stats(all_ms)
        tsum = None
        if tegra_logs:
            try:
                tsum = summarize(parse_tegrastats(tegra_logs[-1]))
            except TegrastatsParseError as err:
                log.warning("tegrastats log unreadable: %s", err)
        base = to_measurement(parsed, tsum) if parsed is not None else {"memory_mb": None, "notes": []}
        throughput = settings.batch * statistics.fmean(qps) if qps else None
        return {
            "latency_ms": {k: st[k] for k in ("median", "p90", "p99", "mean", "std", "cv")},
            "iterations": st["n"],
            "round_medians_ms": [latency_stats(r)["median"] for r in per_round],
            "ratio_to_first": None,  # set by _with_ratios
            "throughput": throughput,
            "peak_rss_mb": None,
            "empty_rss_mb": None,
            "memory_mb": base.get("memory_mb"),
            "session_create_s": None,
            "first_run_ms": None,
            "batch": settings.batch,
            "threads": None,
            "rounds": rounds,
            "engine_bytes": engine.engine_bytes,
            "measured_on": self.describe(),
            "runtime": "trtexec",
            "accuracy_on": ("device: the engine, trtexec --loadInputs/--exportOutput" if self.accuracy_on == "device"
                            else "host: the ONNX through ONNX Runtime (fp32)"),
            "latency_source": "computeMs of trtexec --exportTimes (GPU compute, no H2D/D2H)",
            "device_memory_bytes": getattr(parsed, "device_memory_bytes", None),
            "tegrastats": tsum,
            "device": {k: v for k, v in asdict(info).items()},
            "device_profile": self.profile.name if self.profile else None,
            "precision": engine.meta.get("precision"),
            "warnings": info.warnings(),
            "notes": list(base.get("notes", [])),
        }


def _parse_log(text: str):
    from targets.trtexec_log import TrtexecParseError, parse_trtexec_log

    try:
        return parse_trtexec_log(text)
    except TrtexecParseError:
        return None


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("@@")]
    errs = [ln for ln in lines if "[E]" in ln or "error" in ln.lower()]
    return (errs or lines or ["no output"])[-1][:300]


def make_jetson(options: Mapping[str, Any]) -> JetsonTarget:
    return JetsonTarget(options)
