"""TensorRT builder settings shared by the ``tensorrt`` and ``jetson`` targets: precision by version,
options, the timing-cache key, the batch profile, and the plan + sidecar files."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.io import atomic_write_bytes
from targets.devices import trt_major, trt_tuple
from targets.onnx_facts import OnnxFacts

log = logging.getLogger("pipeline.tensorrt")


PRECISIONS = ("fp32", "fp16", "int8")


_HINT_INSTALL = ("pip install '.[tensorrt]' where NVIDIA's index is reachable, or run inside NVIDIA's "
                 "TensorRT container (x86: nvcr.io/nvidia/tensorrt; Jetson: nvcr.io/nvidia/l4t-jetpack)")


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


def slug(text: str) -> str:
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
    return f"{slug(gpu)}-{cc}-trt{trt_version}-{precision}-{digest}"


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


def require_tensorrt():
    """Import tensorrt, or raise a ConfigError that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ConfigError("the tensorrt Python package is not installed", hint=_HINT_INSTALL) from None
    return trt


def require_cuda_torch():
    try:
        import torch
    except ImportError:
        raise ConfigError("torch is needed for CUDA buffers and events", hint="pip install torch (a CUDA build)") from None
    if not torch.cuda.is_available():
        raise ConfigError("no CUDA device visible to torch",
                          hint="on a Jetson install NVIDIA's torch wheel for your JetPack; the PyPI wheel is CPU-only")
    return torch


def trt_dtype_to_torch(trt, torch, dt):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dt]
