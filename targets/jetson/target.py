"""The ``jetson`` target: build with ``trtexec`` on the device, measure with the one protocol (one
``trtexec`` per round and engine, interleaved), run the engine on real inputs for accuracy."""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.errors import ConfigError, StageError
from core.io import atomic_write_bytes, sha256_file
from targets.base import Engine, MeasureSettings
from targets.devices import (
    detect_profile,
    get_profile,
    trt_major,
)
from targets.jetson.probe import (
    DEFAULT_COMMAND_TIMEOUT_S,
    DEFAULT_REMOTE_PATH,
    EVAL_BATCH,
    PROBE_SCRIPT,
    DeviceInfo,
    accuracy_on_option,
    check_jetson_options,
    check_profile_options,
    parse_probe,
)
from targets.onnx_facts import onnx_facts
from targets.ort.runner import OrtRunner
from targets.ssh import Address, Device, SshSettings
from targets.tensorrt.settings import TrtSettings, batch_profile, precision_plan, timing_cache_key
from targets.timing import interleave_rounds, timing_records
from targets.trtexec.argv import BuildCommand, measure_argv, tegrastats_argv

log = logging.getLogger("pipeline.jetson")


def _parse_times(path: Path) -> list[float]:
    """Per-inference ``computeMs`` from a ``--exportTimes`` JSON (validated by the shared parser)."""
    from targets.trtexec.log import load_trtexec_json

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
        self.accuracy_on = accuracy_on_option(options) if self.runtime == "trtexec" else "host"
        self.profile = get_profile(options["device_profile"]) if options.get("device_profile") else None
        if self.profile is not None and self.runtime == "trtexec":
            check_profile_options(self.profile, self.trt)
        self._info: DeviceInfo | None = None
        self.ort = None
        if self.runtime == "ort":
            from targets.ort.remote import OrtOnDevice

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
        from targets.trtexec.infer import TrtexecRunner

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
    def _measure_ort(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int) -> list:
        assert self.ort is not None
        info = self._ort_info()
        records = self.ort.measure(engines, settings, rounds, self.describe)
        return [rec.with_extra(
            runtime="ort",
            latency_source="ONNX Runtime CPU EP on the device: perf_counter around InferenceSession.run, "
                           "in a fresh worker process (targets/ort/worker.py)",
            device=dict(asdict(info)), device_profile=self.profile.name if self.profile else None,
            precision="fp32", warnings=self._ort_warnings(info),
            accuracy_on="host: the ONNX through ONNX Runtime (fp32, the runtime measured on the device)",
            notes=["memory_mb: peak RSS growth of the worker process on the device (no tegrastats)"],
        ) for rec in records]

    def measure(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int = 1) -> list:
        """One ``trtexec --loadEngine --exportTimes`` (with tegrastats beside it) per round and engine, interleaved
        by the one rule of :func:`targets.timing.interleave_rounds` (trtexec warms up itself: no discarded round)."""
        if self.runtime == "ort":
            return self._measure_ort(engines, settings, rounds)
        if settings.batch > self.trt.max_batch and any(e.meta.get("dynamic_batch") for e in engines):
            raise ConfigError(f"batch {settings.batch} is above the engine's max_batch {self.trt.max_batch}",
                              hint=f"set target option max_batch: {settings.batch} and rebuild")
        for e in engines:
            if e.path is None or not Path(e.path).is_file():
                raise StageError(f"engine file of {Path(e.onnx_path).name} is missing", hint="build it first")
        with self.device.session() as s:
            info = self.info(s)
            runs = _TrtexecRounds(self, s, info, engines, settings)
            lat = interleave_rounds(len(engines), rounds, runs.measure_one)
        sums = runs.summaries()
        return timing_records(engines, lat, batch=settings.batch, rounds=rounds, measured_on=self.describe(),
                              memory_mb=[x["memory_mb"] for x in sums],
                              throughput=[settings.batch * statistics.fmean(q) if q else None for q in runs.qps],
                              extra=[self._extra(e, x, info) for e, x in zip(engines, sums)])

    def _extra(self, engine: Engine, summary: dict, info: DeviceInfo) -> dict:
        return {
            "runtime": "trtexec",
            "accuracy_on": ("device: the engine, trtexec --loadInputs/--exportOutput" if self.accuracy_on == "device"
                            else "host: the ONNX through ONNX Runtime (fp32)"),
            "latency_source": "computeMs of trtexec --exportTimes (GPU compute, no H2D/D2H)",
            "device_memory_bytes": summary["device_memory_bytes"],
            "tegrastats": summary["tegrastats"],
            "device": {k: v for k, v in asdict(info).items()},
            "device_profile": self.profile.name if self.profile else None,
            "precision": engine.meta.get("precision"),
            "warnings": info.warnings(),
            "notes": summary["notes"],
        }


class _TrtexecRounds:
    """One ``trtexec`` run per (round, engine) on a device session: the samples, the last log, tegrastats, qps."""

    def __init__(self, target: JetsonTarget, session, info: DeviceInfo, engines: Sequence[Engine],
                 settings: MeasureSettings) -> None:
        self.t, self.s, self.info, self.engines, self.settings = target, session, info, list(engines), settings
        self.facts = [onnx_facts(Path(e.onnx_path)) for e in engines]
        self.names = [f"e{i}.plan" for i in range(len(engines))]
        for e, n in zip(engines, self.names):
            session.put(Path(e.path), n)
        self.logs_dir = Path(engines[0].path).parent / "logs"
        self.rounds_done = [0] * len(engines)
        self.last_log: list[Any] = [None] * len(engines)
        self.tegra: list[list[str]] = [[] for _ in engines]
        self.qps: list[list[float]] = [[] for _ in engines]

    def measure_one(self, i: int) -> tuple[list[float], float]:
        s, e, dev = self.s, self.engines[i], self.t.device.name
        tag = f"r{self.rounds_done[i]}-e{i}"
        self.rounds_done[i] += 1
        argv = measure_argv(self.info.trt_version, s.path(self.names[i]), s.path(f"times-{tag}.json"), self.facts[i],
                            e.sample_shape, self.settings.batch, self.settings, self.t.trt.dla_core)
        side = tegrastats_argv(s.path(f"tegra-{tag}.log")) if self.info.tegrastats else None
        t0 = time.perf_counter()
        res = s.run(argv, sidecar=side, sidecar_log=f"tegra-{tag}.out", check=False)
        wall = time.perf_counter() - t0
        stem = f"{Path(e.path).name}.{tag}"
        atomic_write_bytes(self.logs_dir / f"{stem}.trtexec.log", (res.stdout + res.stderr).encode())
        if res.returncode != 0:
            raise StageError(f"trtexec failed to run {Path(e.path).name} on {dev} "
                             f"(exit {res.returncode}): {_tail(res.stdout + res.stderr)}",
                             hint=f"full log: logs/{stem}.trtexec.log")
        parsed = _parse_log(res.stdout)
        self.last_log[i] = parsed
        if parsed is not None and parsed.throughput_qps:
            self.qps[i].append(parsed.throughput_qps)
        if s.exists(f"times-{tag}.json"):
            samples = _parse_times(s.get(f"times-{tag}.json", self.logs_dir / f"{stem}.times.json"))
        elif parsed is not None and parsed.primary_latency is not None:
            log.warning("no --exportTimes JSON from %s; using the console summary", dev)
            samples = [parsed.primary_latency.median]
        else:
            raise StageError(f"no timing from trtexec on {dev}", hint=f"see logs/{stem}.trtexec.log")
        if side and s.exists(f"tegra-{tag}.log"):
            self.tegra[i].append(s.get(f"tegra-{tag}.log", self.logs_dir / f"{stem}.tegrastats.log")
                                 .read_text(errors="replace"))
        return samples, wall

    def summaries(self) -> list[dict]:
        """Per engine: memory and notes from the last trtexec log (+ tegrastats), device memory, tegrastats."""
        from targets.tegrastats import TegrastatsParseError, parse_tegrastats, summarize
        from targets.trtexec.log import to_measurement

        out = []
        for parsed, logs in zip(self.last_log, self.tegra):
            tsum = None
            if logs:
                try:
                    tsum = summarize(parse_tegrastats(logs[-1]))
                except TegrastatsParseError as err:
                    log.warning("tegrastats log unreadable: %s", err)
            base = to_measurement(parsed, tsum) if parsed is not None else {"memory_mb": None, "notes": []}
            out.append({"memory_mb": base.get("memory_mb"), "notes": list(base.get("notes", [])), "tegrastats": tsum,
                        "device_memory_bytes": getattr(parsed, "device_memory_bytes", None)})
        return out


def _parse_log(text: str):
    from targets.trtexec.log import TrtexecParseError, parse_trtexec_log

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
