"""Target ``tensorrt``: build a plan with the TensorRT Python API and measure it with CUDA events.

The flow follows NVIDIA's samples (``../shared/research/deploy.md`` section 2)::

    builder -> network (ONNX parser; every parser error collected) -> builder config:
      workspace pool limit, one optimization profile for the dynamic batch, timing cache,
      precision: TRT <= 10 weakly typed (BuilderFlag.FP16 / INT8 + entropy calibrator),
                 TRT >= 11 strongly typed (precision comes from the ONNX tensor types),
      SPARSE_WEIGHTS (2:4 tactics), DLA core + GPU_FALLBACK
    -> build_serialized_network -> plan written plain + sidecar JSON (never a header in the plan)

Measurement: an execution context over torch CUDA buffers, ``execute_async_v3`` on a stream,
CUDA events around each call, warm-up then a minimum duration; engines measured together are
interleaved round by round like the ``cpu`` target.

``tensorrt`` and ``torch.cuda`` are imported inside functions; where TensorRT is missing, the
target table reports it and :func:`require_tensorrt` raises a ConfigError with a hint.
The pure parts (precision dispatch, timing-cache key, option checks, ONNX facts) run anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, StageError
from core.io import atomic_write_bytes, sha256_file
from core.parity import Tolerance, compare_outputs
from targets.base import Engine, MeasureSettings
from targets.devices import trt_major, trt_tuple
from targets.stats import latency_stats

log = logging.getLogger("pipeline.tensorrt")

PRECISIONS = ("fp32", "fp16", "int8")
_HINT_INSTALL = ("pip install '.[tensorrt]' where NVIDIA's index is reachable, or run inside NVIDIA's "
                 "TensorRT container (x86: nvcr.io/nvidia/tensorrt; Jetson: nvcr.io/nvidia/l4t-jetpack)")


# --------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class OnnxFacts:
    """What the builder needs to know about an ONNX file before TensorRT sees it."""

    input_name: str
    input_dims: tuple[int | str, ...]  # str = symbolic (dim_param), 0/-1 = unknown
    has_fp16: bool
    has_qdq: bool
    input_dtype: str = "float32"  # numpy name of the input's element type (raw input files are written in it)
    output_name: str | None = None  # the first graph output

    @property
    def dynamic_batch(self) -> bool:
        d = self.input_dims[0] if self.input_dims else 1
        return isinstance(d, str) or d <= 0


def onnx_facts(path: Path) -> OnnxFacts:
    """First graph input (name, dims, element type), first output, whether any tensor is FP16, whether it has
    Q/DQ nodes."""
    import onnx
    from onnx import helper

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if not inputs:
        raise ConfigError(f"{Path(path).name} has no graph input", hint="export the model with an input")
    first = inputs[0]
    dims = tuple(d.dim_param if d.dim_param else d.dim_value for d in first.type.tensor_type.shape.dim)
    fp16 = onnx.TensorProto.FLOAT16
    has_fp16 = any(i.type.tensor_type.elem_type == fp16 for i in inputs) or any(
        t.data_type == fp16 for t in m.graph.initializer)
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node)
    dtype = helper.tensor_dtype_to_np_dtype(first.type.tensor_type.elem_type).name
    output = m.graph.output[0].name if m.graph.output else None
    return OnnxFacts(first.name, dims, has_fp16, has_qdq, dtype, output)


@dataclass(frozen=True)
class PrecisionPlan:
    """How a requested precision is obtained on a given TensorRT version."""

    precision: str  # effective: fp32 | fp16 | int8
    strongly_typed: bool
    builder_flags: tuple[str, ...]  # BuilderFlag names; trtexec gets the same as --fp16 / --int8
    notes: tuple[str, ...] = ()


def precision_plan(trt_version: str, precision: str | None, facts: OnnxFacts | None = None) -> PrecisionPlan:
    """Version dispatch: TRT <= 10 sets builder flags; TRT >= 11 is strongly typed.

    ``precision=None`` means "the default": FP16 where it is a flag (TRT <= 10), the ONNX's own
    types on TRT >= 11. On TRT >= 11 FP16 needs an FP16 ONNX and INT8 needs Q/DQ nodes; asking
    for them on an FP32 graph is an error, not a silent FP32 engine.
    """
    major = trt_major(trt_version)
    if major is None:
        raise ConfigError(f"unknown TensorRT version {trt_version!r}", hint="check the TensorRT install")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}",
                          hint="precision: fp32 | fp16 | int8")
    if major < 11:
        p = precision or "fp16"
        flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[p]
        notes = ("INT8 also enables FP16 for layers without an INT8 kernel",) if p == "int8" else ()
        if major == 10 and trt_tuple(trt_version) >= (10, 12) and p != "fp32":
            notes += ("TensorRT 10.12+ deprecates weak typing; TensorRT 11 removes it",)
        return PrecisionPlan(p, False, flags, notes)
    onnx_p = "int8" if facts and facts.has_qdq else "fp16" if facts and facts.has_fp16 else "fp32"
    if precision in (None, onnx_p) or facts is None:
        return PrecisionPlan(precision or onnx_p, True, (),
                             (f"TensorRT {trt_version} is strongly typed: precision comes from the ONNX tensor types",))
    if precision == "fp32":
        return PrecisionPlan(onnx_p, True, (), (f"the ONNX is already {onnx_p}; strongly typed TensorRT keeps it",))
    what = "FP16 tensors" if precision == "fp16" else "Q/DQ (QuantizeLinear/DequantizeLinear) nodes"
    why = ("" if precision == "fp16" else
           " (INT8 comes from Q/DQ nodes only; the entropy calibrator is implicit quantization, TensorRT <= 10)")
    raise ConfigError(f"TensorRT {trt_version} is strongly typed and this ONNX has no {what}: "
                      f"precision {precision} cannot be set by a flag{why}",
                      hint="export an FP16 ONNX (e.g. ModelOpt AutoCast) or a Q/DQ INT8 ONNX (ModelOpt), "
                           "or use precision fp32")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")[:40] or "unknown"


def timing_cache_key(gpu: str, compute_capability: str | None, trt_version: str, precision: str,
                     shapes: Mapping[str, Sequence[Sequence[int]]] | str, extra: str = "") -> str:
    """File-name-safe key: the cache is only valid for one GPU, TensorRT version and builder config.

    ``shapes`` is the optimization profile (input -> (min, opt, max)); ``extra`` takes other
    builder settings (DLA core, sparsity) that change the tactics timed.
    """
    shape_text = shapes if isinstance(shapes, str) else json.dumps(
        {k: [list(map(int, s)) for s in v] for k, v in sorted(shapes.items())}, sort_keys=True)
    digest = hashlib.sha256("|".join([gpu, compute_capability or "", trt_version, precision, shape_text,
                                      extra]).encode()).hexdigest()[:12]
    cc = f"sm{compute_capability.replace('.', '')}" if compute_capability else "sm-unknown"
    return f"{_slug(gpu)}-{cc}-trt{trt_version}-{precision}-{digest}"


def batch_profile(sample_shape: Sequence[int], max_batch: int, opt_batch: int | None = None
                  ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes for a dynamic batch: 1 .. max_batch, optimized at ``opt_batch``."""
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}", hint="e.g. max_batch: 8")
    s = tuple(int(x) for x in sample_shape)
    opt = min(max(1, opt_batch or max_batch), max_batch)
    return (1, *s), (opt, *s), (max_batch, *s)


@dataclass(frozen=True)
class TrtSettings:
    """Builder settings shared by the ``tensorrt`` and ``jetson`` targets (frozen; None = default)."""

    precision: str | None = None
    workspace_mb: int | None = None
    dla_core: int | None = None
    sparsity: bool = False
    max_batch: int = 1
    timing_cache_dir: Path | None = None
    calibration_batches: int = 16

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TrtSettings:
        kw: dict[str, Any] = {}
        p = options.get("precision")
        if p is not None:
            p = str(p).lower()
            if p not in PRECISIONS:
                from core.errors import did_you_mean

                raise ConfigError(f"precision '{options['precision']}' is not supported.{did_you_mean(p, PRECISIONS)}",
                                  hint=f"precision: {' | '.join(PRECISIONS)}")
            kw["precision"] = p
        for key, lo in (("workspace_mb", 1), ("dla_core", 0), ("max_batch", 1), ("calibration_batches", 1)):
            if options.get(key) is not None:
                v = options[key]
                if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).isdigit() or int(v) < lo:
                    raise ConfigError(f"target option {key} must be an integer >= {lo}, got {v!r}",
                                      hint=f"e.g. {key}: {max(lo, 1)}")
                kw[key] = int(v)
        if options.get("sparsity") is not None:
            v = options["sparsity"]
            if not isinstance(v, bool) and str(v).lower() not in ("true", "false", "enable", "disable"):
                raise ConfigError(f"target option sparsity must be true or false, got {v!r}", hint="sparsity: true")
            kw["sparsity"] = v if isinstance(v, bool) else str(v).lower() in ("true", "enable")
        if options.get("timing_cache_dir") is not None:
            kw["timing_cache_dir"] = Path(str(options["timing_cache_dir"])).expanduser()
        s = cls(**kw)
        if s.dla_core is not None and s.precision == "fp32":
            raise ConfigError("DLA runs FP16 or INT8 only; precision fp32 with dla_core is not possible",
                              hint="set precision: fp16 (or int8), or drop dla_core")
        return s


def write_plan(plan: bytes, path: Path, meta: Mapping[str, Any]) -> Path:
    """The plan exactly as TensorRT serialized it (``trtexec --loadEngine`` reads it), metadata beside it."""
    atomic_write_bytes(Path(path), bytes(plan))
    atomic_write_bytes(Path(str(path) + ".json"), json.dumps(dict(meta), indent=2, default=str).encode())
    return Path(path)


# --------------------------------------------------------------------------- TensorRT (lazy)


def require_tensorrt():
    """Import tensorrt, or raise a ConfigError that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ConfigError("the tensorrt Python package is not installed", hint=_HINT_INSTALL) from None
    return trt


def _require_cuda_torch():
    try:
        import torch
    except ImportError:
        raise ConfigError("torch is needed for CUDA buffers and events", hint="pip install torch (a CUDA build)") from None
    if not torch.cuda.is_available():
        raise ConfigError("no CUDA device visible to torch",
                          hint="on a Jetson install NVIDIA's torch wheel for your JetPack; the PyPI wheel is CPU-only")
    return torch


def _trt_dtype_to_torch(trt, torch, dt):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dt]


# --------------------------------------------------------------------------- INT8 calibration (pure parts)


def _as_sample(item: Any) -> np.ndarray:
    """One calibration sample as float32: a Dataset's ``(x, label)`` pair gives ``x``."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    if hasattr(item, "detach"):  # a torch tensor (CPU), without importing torch here
        item = item.detach().cpu().numpy()
    return np.asarray(item, dtype=np.float32)


def calibration_batches(samples: Iterable[Any], batch: int, count: int,
                        sample_shape: Sequence[int] | None = None) -> list[np.ndarray]:
    """Up to ``count`` batches of exactly ``batch`` samples each (float32, C-contiguous).

    ``samples`` yields single samples: arrays, CPU tensors, or ``(x, label)`` pairs as the
    pipeline's calibration split (a Dataset) does; only as many as needed are read. A last,
    partial batch is dropped: the calibrator's batch size is fixed (the profile's opt shape).
    Raises ConfigError when not one full batch can be made, or a sample has the wrong shape.
    """
    if batch < 1 or count < 1:
        raise ValueError(f"batch and count must be >= 1, got {batch}, {count}")
    out: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    for item in samples:
        x = _as_sample(item)
        if sample_shape is not None and tuple(x.shape) != tuple(sample_shape):
            raise ConfigError(f"calibration sample has shape {tuple(x.shape)}, the model takes {tuple(sample_shape)}",
                              hint="calibrate with the model's own data")
        cur.append(x)
        if len(cur) == batch:
            out.append(np.ascontiguousarray(np.stack(cur)))
            cur = []
            if len(out) == count:
                break
    if not out:
        raise ConfigError(f"INT8 calibration needs at least one full batch of {batch} samples, got {len(cur)}",
                          hint="use a larger calibration split, or a smaller max_batch (the calibration batch)")
    return out


class CalibrationFeed:
    """Hands out calibration batches one by one (what ``get_batch`` returns), then ``None``."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        if not batches:
            raise ConfigError("no calibration batches", hint="pass the calibration split")
        shapes = {tuple(b.shape) for b in batches}
        if len(shapes) != 1:
            raise ValueError(f"calibration batches differ in shape: {sorted(shapes)}")
        self.batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
        self.shape = shapes.pop()
        self.fed = 0

    @property
    def batch_size(self) -> int:
        return int(self.shape[0])

    def next(self) -> np.ndarray | None:
        if self.fed >= len(self.batches):
            return None
        b = self.batches[self.fed]
        self.fed += 1
        return b

    def reset(self) -> None:
        self.fed = 0


def calibration_digest(batches: Sequence[np.ndarray]) -> str:
    """sha256 of the calibration data (shapes and bytes): a changed set must not reuse a cache."""
    h = hashlib.sha256()
    for b in batches:
        h.update(repr((b.shape, str(b.dtype))).encode())
        h.update(np.ascontiguousarray(b).tobytes())
    return h.hexdigest()


def calibration_cache_path(cache_dir: Path, onnx_sha256: str, trt_version: str, batches: Sequence[np.ndarray],
                           algorithm: str = "entropy2") -> Path:
    """The calibration cache file for one network, TensorRT version, calibrator and calibration set.

    TensorRT leaves invalidation to the application ("if the network or calibration set changes,
    it is the application's responsibility to invalidate the cache"): all of them are in the name.
    """
    shape = "x".join(str(d) for d in batches[0].shape) if batches else "none"
    key = hashlib.sha256("|".join([onnx_sha256, trt_version, algorithm, shape, str(len(batches)),
                                   calibration_digest(batches)]).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"calib-{algorithm}-trt{_slug(trt_version)}-{len(batches)}x{shape}-{key}.cache"


@dataclass(frozen=True)
class CalibrationCache:
    """The calibrator's cache file: ``read`` gives its bytes (None when absent or empty), ``write`` is atomic."""

    path: Path

    def read(self) -> bytes | None:
        try:
            data = Path(self.path).read_bytes()
        except FileNotFoundError:
            return None
        return data or None

    def write(self, data: bytes) -> None:
        atomic_write_bytes(Path(self.path), bytes(data))

    @property
    def exists(self) -> bool:
        return self.read() is not None


def _make_calibrator(trt, feed: CalibrationFeed, cache: CalibrationCache):
    """An IInt8EntropyCalibrator2 (TensorRT <= 10 implicit INT8) over ``feed``, caching to ``cache``."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise ConfigError(f"TensorRT {trt.__version__} has no IInt8EntropyCalibrator2 (implicit INT8 calibration "
                          "was removed)", hint="export a Q/DQ INT8 ONNX (ModelOpt) and build it strongly typed")
    torch = _require_cuda_torch()

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._dev = torch.empty(feed.shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return feed.batch_size

        def get_batch(self, names):  # TensorRT's signature: device pointers, one per input, or None at the end
            b = feed.next()
            if b is None:
                return None
            self._dev.copy_(torch.from_numpy(b))
            torch.cuda.synchronize()
            return [int(self._dev.data_ptr())]

        def read_calibration_cache(self):
            return cache.read()

        def write_calibration_cache(self, data) -> None:
            cache.write(bytes(data))

    return _Calibrator()


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability) of device 0, for the timing-cache key."""
    torch = _require_cuda_torch()
    p = torch.cuda.get_device_properties(0)
    return p.name, f"{p.major}.{p.minor}"


def build_plan(onnx_path: Path, plan_path: Path, sample_shape: Sequence[int], settings: TrtSettings,
               calibration: Iterable[Any] | None = None, cache_dir: Path | None = None) -> dict:
    """Build ``onnx_path`` into a plain plan at ``plan_path`` (+ sidecar JSON); returns the metadata.

    ``calibration`` (INT8 on TensorRT <= 10): single samples or ``(x, label)`` pairs, e.g. the
    pipeline's calibration split; ``settings.calibration_batches`` batches at the profile's opt
    batch are read from it. The calibration cache is keyed by network, TensorRT version and data.
    """
    trt = require_tensorrt()
    version = trt.__version__
    facts = onnx_facts(onnx_path)
    plan = precision_plan(version, settings.precision, facts)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = trt_major(version) or 0
    flags = 0
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for err in errors:
            log.error("TensorRT ONNX parser: %s", err)
        raise StageError(f"TensorRT {version} cannot parse {Path(onnx_path).name}: {len(errors)} error(s); first: "
                         f"{errors[0] if errors else 'unknown'}",
                         hint="all parser errors are in logs/pipeline.log; check opset and unsupported ops "
                              "(polygraphy inspect capability)")
    config = builder.create_builder_config()
    if settings.workspace_mb:
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
        else:  # TRT < 8.4
            config.max_workspace_size = settings.workspace_mb << 20
    shapes: dict[str, tuple] = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if any(d < 0 for d in t.shape):
            lo, opt, hi = batch_profile(sample_shape, settings.max_batch)
            shapes[t.name] = (lo, opt, hi)
    if shapes:
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            prof.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(prof)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    calib_meta, calibrator = None, None
    if "INT8" in plan.builder_flags:
        if calibration is None:
            raise ConfigError("precision int8 needs calibration data (the entropy calibrator reads it)",
                              hint="the pipeline hands its calibration split to the build; from the API pass "
                                   "calibration=<samples>")
        # TensorRT calibrates a dynamic-shape network at the calibration profile's opt shape
        opt_batch = int(next(iter(shapes.values()))[1][0]) if shapes else (
            int(facts.input_dims[0]) if facts.input_dims and isinstance(facts.input_dims[0], int)
            and facts.input_dims[0] > 0 else 1)
        batches = calibration_batches(calibration, opt_batch, settings.calibration_batches, tuple(sample_shape))
        cache_base = Path(cache_dir or settings.timing_cache_dir or Path(plan_path).parent / "trt-cache")
        calib_cache = CalibrationCache(calibration_cache_path(cache_base, sha256_file(Path(onnx_path)), version,
                                                              batches))
        reused = calib_cache.exists
        calibrator = _make_calibrator(trt, CalibrationFeed(batches), calib_cache)  # a Python ref until built
        config.int8_calibrator = calibrator
        if shapes and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(prof)
        calib_meta = {"algorithm": "IInt8EntropyCalibrator2", "batches": len(batches), "batch": opt_batch,
                      "cache": str(calib_cache.path), "cache_reused": reused}
    if settings.sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if settings.dla_core is not None:
        if builder.num_DLA_cores <= settings.dla_core:
            raise ConfigError(f"dla_core {settings.dla_core} requested, this device has {builder.num_DLA_cores} DLA cores",
                              hint="Orin Nano has none; Orin NX 8GB has 1; drop dla_core or pick a lower one")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    gpu, cc = gpu_identity()
    key = timing_cache_key(gpu, cc, version, plan.precision, {k: v for k, v in shapes.items()},
                           extra=f"dla={settings.dla_core};sparse={settings.sparsity}")
    cache_file = Path(cache_dir or settings.timing_cache_dir or Path(plan_path).parent / "trt-cache") / f"{key}.cache"
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    calibrator = None  # TensorRT is done with it
    if serialized is None:
        raise StageError(f"TensorRT {version} failed to build {Path(onnx_path).name}",
                         hint="see the TensorRT messages in logs/pipeline.log; try a larger workspace_mb")
    atomic_write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    meta = {"tensorrt": version, "gpu": gpu, "compute_capability": cc, "precision": plan.precision,
            "strongly_typed": plan.strongly_typed, "builder_flags": list(plan.builder_flags),
            "notes": list(plan.notes), "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
            "timing_cache": str(cache_file), "timing_cache_key": key, "build_s": build_s, "calibration": calib_meta,
            "onnx": str(onnx_path), "onnx_sha256": sha256_file(Path(onnx_path))}
    write_plan(bytes(serialized), Path(plan_path), meta)
    return meta


class TrtRunner:
    """``with TrtRunner(plan) as r: y = r.run(x)``: an execution context over torch CUDA buffers."""

    def __init__(self, plan_path: Path) -> None:
        self.plan_path = Path(plan_path)
        self._ctx = None

    def __enter__(self) -> TrtRunner:
        trt = require_tensorrt()
        self._torch = torch = _require_cuda_torch()
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise StageError(f"TensorRT cannot load {self.plan_path.name}",
                             hint="plans only load on the GPU and TensorRT version that built them; rebuild")
        self._ctx = self.engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._buffers: dict[str, Any] = {}
        self._batch = None
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx = None
        self._buffers = {}

    @property
    def device_memory_bytes(self) -> int:
        e = self.engine
        return int(getattr(e, "device_memory_size_v2", None) or e.device_memory_size)

    def _bind(self, shape: Sequence[int]) -> None:
        torch, trt = self._torch, self._trt
        if self._batch == tuple(shape):
            return
        name = self.inputs[0]
        self._ctx.set_input_shape(name, tuple(shape))
        for n in self.inputs + self.outputs:
            shp = tuple(self._ctx.get_tensor_shape(n))
            dt = _trt_dtype_to_torch(trt, torch, self.engine.get_tensor_dtype(n))
            self._buffers[n] = torch.zeros(shp, dtype=dt, device="cuda")
            self._ctx.set_tensor_address(n, int(self._buffers[n].data_ptr()))
        self._batch = tuple(shape)

    def execute(self) -> None:
        if not self._ctx.execute_async_v3(self._stream.cuda_stream):
            raise StageError("TensorRT execution failed", hint="see logs/pipeline.log")

    def batch_range(self) -> tuple[int, int, bool]:
        """(smallest, largest batch, static?) the engine accepts on its first input (profile 0)."""
        name = self.inputs[0]
        first = int(self.engine.get_tensor_shape(name)[0])
        if first > 0:
            return first, first, True
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        return int(lo[0]), int(hi[0]), False

    def _run_chunk(self, x: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        self._bind(x.shape)
        inp = self._buffers[self.inputs[0]]
        with torch.cuda.stream(self._stream):
            inp.copy_(torch.from_numpy(np.ascontiguousarray(x)).to(inp.dtype), non_blocking=False)
            self.execute()
        self._stream.synchronize()
        return [self._buffers[n].float().cpu().numpy() for n in self.outputs]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """All outputs for a batch of any size: split into the engine's batch range (padded if static)."""
        lo, hi, static = self.batch_range()
        parts: list[list[np.ndarray]] = []
        for a, b in split_batches(len(x), hi):
            chunk, n = pad_batch(x[a:b], lo, hi if static else b - a)
            parts.append([o[:n] for o in self._run_chunk(chunk)])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(self.outputs))]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_all(x)[0]

    def time_calls(self, shape: Sequence[int], warmup_s: float, min_s: float, min_n: int) -> tuple[list[float], float]:
        """Per-call GPU time (ms) from CUDA events, after a warm-up; at least ``min_s`` and ``min_n``."""
        torch = self._torch
        self._bind(shape)
        self._buffers[self.inputs[0]].normal_()
        end = time.perf_counter() + warmup_s
        while time.perf_counter() < end:
            self.execute()
        self._stream.synchronize()
        samples: list[float] = []
        start = time.perf_counter()
        ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        while True:
            ev0.record(self._stream)
            self.execute()
            ev1.record(self._stream)
            ev1.synchronize()
            samples.append(ev0.elapsed_time(ev1))
            now = time.perf_counter()
            if (now - start >= min_s and len(samples) >= min_n) or now - start >= max(10 * min_s, 30.0):
                return samples, now - start


def parity_check(trt_outputs: Sequence[np.ndarray], ort_outputs: Sequence[np.ndarray], names: Sequence[str],
                 atol: float = 1e-2, rtol: float = 1e-2) -> dict[str, dict[str, float]]:
    """TensorRT vs ONNX Runtime outputs through the one validator (:func:`core.parity.compare_outputs`).

    Defaults suit FP16 (Polygraphy's 1e-5 defaults are "too strict for FP16/INT8").
    """
    return compare_outputs(ort_outputs, trt_outputs, names, Tolerance(atol, rtol), converted="TensorRT",
                           reference="ONNX Runtime",
                           hint="FP16 overflow is common in norms/softmax: pin those layers to FP32 or use fp32")


class TensorRTTarget:
    """TensorRT on the local GPU (see the module docstring)."""

    name = "tensorrt"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.settings = TrtSettings.from_options(options)

    @property
    def build_inputs(self) -> frozenset[str]:
        """What ``build`` takes beyond the ONNX: INT8 needs calibration samples."""
        return frozenset({"calibration"}) if self.settings.precision == "int8" else frozenset()

    def describe(self, threads: int | None = None) -> str:
        trt = require_tensorrt()
        gpu, cc = gpu_identity()
        return f"tensorrt {trt.__version__} on {gpu} (sm {cc})"

    def build(self, onnx_path: Path, sample_shape: tuple[int, ...], out_dir: Path,
              calibration: Iterable[Any] | None = None) -> Engine:
        """Build a plan; ``calibration`` (samples, e.g. the calibration split) is read for INT8 only."""
        plan_path = Path(out_dir) / f"{Path(onnx_path).stem}.{self.settings.precision or 'default'}.plan"
        meta = build_plan(Path(onnx_path), plan_path, sample_shape, self.settings, calibration)
        return Engine(self.name, Path(onnx_path), plan_path, plan_path.stat().st_size, meta["build_s"],
                      tuple(sample_shape), {"runtime": f"tensorrt {meta['tensorrt']}", **meta})

    def runner(self, engine: Engine) -> TrtRunner:
        """Accuracy through the engine itself."""
        return TrtRunner(Path(engine.path))

    def measure(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int = 1) -> list[dict]:
        """CUDA-event latency, interleaved rounds; records shaped like the ``cpu`` target's."""
        from contextlib import ExitStack

        with ExitStack() as stack:
            runners = [stack.enter_context(TrtRunner(Path(e.path))) for e in engines]
            shape = (settings.batch, *engines[0].sample_shape)
            for r in runners:  # one discarded round, as in the cpu worker
                r.time_calls(shape, settings.warmup_s, settings.warmup_s, 1)
            per: list[list[list[float]]] = [[] for _ in engines]
            walls = [0.0] * len(engines)
            for _ in range(rounds):
                for i, r in enumerate(runners):
                    s, w = r.time_calls(shape, settings.warmup_s, settings.min_duration_s, settings.min_iters)
                    per[i].append(s)
                    walls[i] += w
            dev_mem = [r.device_memory_bytes for r in runners]
        medians = [[latency_stats(s)["median"] for s in rounds_] for rounds_ in per]
        out = []
        for i, e in enumerate(engines):
            st = latency_stats([x for s in per[i] for x in s])
            ratios = [a / b for a, b in zip(medians[0], medians[i]) if b > 0]
            out.append({
                "latency_ms": {k: st[k] for k in ("median", "p90", "p99", "mean", "std", "cv")},
                "iterations": st["n"], "round_medians_ms": medians[i],
                "ratio_to_first": statistics.median(ratios) if ratios else None,
                "throughput": settings.batch * st["n"] / walls[i] if walls[i] > 0 else 0.0,
                "peak_rss_mb": None, "empty_rss_mb": None,
                "memory_mb": (dev_mem[i] + (e.engine_bytes or 0)) / 2**20,
                "device_memory_bytes": dev_mem[i], "session_create_s": None, "first_run_ms": None,
                "batch": settings.batch, "threads": None, "rounds": rounds, "engine_bytes": e.engine_bytes,
                "latency_source": "CUDA events around execute_async_v3 (GPU time, no H2D/D2H)",
                "measured_on": self.describe(),
            })
        return out


def split_batches(n: int, max_batch: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``n`` samples in chunks of at most ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return [(a, min(a + max_batch, n)) for a in range(0, n, max_batch)]


def pad_batch(x: np.ndarray, min_batch: int, size: int) -> tuple[np.ndarray, int]:
    """``x`` zero-padded to ``max(len(x), min_batch, size)`` rows for a static-batch engine; returns (x, real rows)."""
    n = len(x)
    want = max(n, min_batch, size)
    if want == n:
        return x, n
    pad = np.zeros((want - n, *x.shape[1:]), dtype=x.dtype)
    return np.concatenate([x, pad]), n


def iter_batches(x: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(x), batch):
        yield x[i:i + batch]
