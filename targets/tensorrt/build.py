"""Building a TensorRT plan with the Python API (NVIDIA's sample flow; see :mod:`targets.tensorrt`).

:func:`build_plan` = parse the ONNX (every parser error collected) -> builder config (workspace,
batch profile, precision flags or strong typing, INT8 entropy calibration, 2:4 sparsity, DLA) ->
timing cache -> ``build_serialized_network`` -> plain plan + sidecar JSON.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.errors import ConfigError, StageError
from core.io import atomic_write_bytes, sha256_file
from targets.devices import trt_major
from targets.onnx_facts import onnx_facts
from targets.tensorrt.calibration import (
    CalibrationCache,
    CalibrationFeed,
    calibration_batches,
    calibration_cache_path,
    make_calibrator,
)
from targets.tensorrt.settings import (
    PrecisionPlan,
    TrtSettings,
    batch_profile,
    log,
    precision_plan,
    require_cuda_torch,
    require_tensorrt,
    timing_cache_key,
    write_plan,
)


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability) of device 0, for the timing-cache key."""
    torch = require_cuda_torch()
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
    cache_base = Path(cache_dir or settings.timing_cache_dir or Path(plan_path).parent / "trt-cache")
    builder, network, parser = _parse(trt, onnx_path, plan)  # the parser must outlive the build (it owns weights)
    config = builder.create_builder_config()
    if settings.workspace_mb:
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
        else:  # TRT < 8.4
            config.max_workspace_size = settings.workspace_mb << 20
    shapes, prof = _batch_profile(builder, network, config, sample_shape, settings)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    calibrator, calib_meta = None, None
    if "INT8" in plan.builder_flags:
        calibrator, calib_meta = _int8_calibrator(trt, config, prof, shapes, facts, onnx_path, version, sample_shape,
                                                  settings, calibration, cache_base)
    _devices(trt, builder, config, settings)
    gpu, cc = gpu_identity()
    key = timing_cache_key(gpu, cc, version, plan.precision, {k: v for k, v in shapes.items()},
                           extra=f"dla={settings.dla_core};sparse={settings.sparsity}")
    cache_file = cache_base / f"{key}.cache"
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    del calibrator, parser  # TensorRT is done with them (held until here: it reads them while building)
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


def _parse(trt, onnx_path: Path, plan: PrecisionPlan):
    """Builder, network and parser of the ONNX file; every parser error goes to the log, the first to the message."""
    version = trt.__version__
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if (trt_major(version) or 0) < 10:
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
    return builder, network, parser


def _batch_profile(builder, network, config, sample_shape: Sequence[int], settings: TrtSettings):
    """One optimization profile, batch 1..max_batch, for the inputs with a dynamic dimension."""
    shapes: dict[str, tuple] = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if any(d < 0 for d in t.shape):
            lo, opt, hi = batch_profile(sample_shape, settings.max_batch)
            shapes[t.name] = (lo, opt, hi)
    prof = None
    if shapes:
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            prof.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(prof)
    return shapes, prof


def _int8_calibrator(trt, config, prof, shapes: dict, facts, onnx_path: Path, version: str,
                     sample_shape: Sequence[int], settings: TrtSettings, calibration, cache_base: Path):
    """The entropy calibrator over the calibration split (TensorRT <= 10), and what the sidecar says of it."""
    if calibration is None:
        raise ConfigError("precision int8 needs calibration data (the entropy calibrator reads it)",
                          hint="the pipeline hands its calibration split to the build; from the API pass "
                               "calibration=<samples>")
    # TensorRT calibrates a dynamic-shape network at the calibration profile's opt shape
    opt_batch = int(next(iter(shapes.values()))[1][0]) if shapes else (
        int(facts.input_dims[0]) if facts.input_dims and isinstance(facts.input_dims[0], int)
        and facts.input_dims[0] > 0 else 1)
    batches = calibration_batches(calibration, opt_batch, settings.calibration_batches, tuple(sample_shape))
    calib_cache = CalibrationCache(calibration_cache_path(cache_base, sha256_file(Path(onnx_path)), version, batches))
    reused = calib_cache.exists
    calibrator = make_calibrator(trt, CalibrationFeed(batches), calib_cache)  # a Python ref until built
    config.int8_calibrator = calibrator
    if shapes and hasattr(config, "set_calibration_profile"):
        config.set_calibration_profile(prof)
    return calibrator, {"algorithm": "IInt8EntropyCalibrator2", "batches": len(batches), "batch": opt_batch,
                        "cache": str(calib_cache.path), "cache_reused": reused}


def _devices(trt, builder, config, settings: TrtSettings) -> None:
    """2:4 sparse tactics and the DLA core (with GPU fallback), as the settings ask."""
    if settings.sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if settings.dla_core is not None:
        if builder.num_DLA_cores <= settings.dla_core:
            raise ConfigError(f"dla_core {settings.dla_core} requested, this device has {builder.num_DLA_cores} DLA cores",
                              hint="Orin Nano has none; Orin NX 8GB has 1; drop dla_core or pick a lower one")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
