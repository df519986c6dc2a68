"""The ``cuda`` target's settings (checked up front, before any GPU is touched) and availability."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, did_you_mean

RUNTIMES = ("torch", "ort")


PRECISIONS = ("fp32", "fp16")


OPTIONS = frozenset({"runtime", "precision", "graphs", "channels_last", "batch"})


_TRUE = ("true", "1", "yes", "on")


_FALSE = ("false", "0", "no", "off")


_HINT_ORT = "pip install onnxruntime-gpu in place of onnxruntime; its CUDA major must match the driver's"


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"target option {key} must be true or false, got {value!r}", hint=f"{key}: true")


def _choice(key: str, value: Any, allowed: Sequence[str]) -> str:
    text = str(value).strip().lower()
    if text not in allowed:
        raise ConfigError(f"target option {key} '{value}' is not one of {', '.join(allowed)}."
                          f"{did_you_mean(text, allowed)}", hint=f"{key}: {' | '.join(allowed)}")
    return text


@dataclass(frozen=True)
class CudaSettings:
    """What the ``cuda`` target measures (frozen; built from target options, checked up front).

    Attributes:
        runtime: ``torch`` (the module, eager or CUDA graphs) or ``ort`` (the ONNX, CUDA EP).
        precision: ``fp32`` or ``fp16``. torch: ``module.half()`` and half inputs. ort: the ONNX's
            own types (``fp16`` needs an FP16 ONNX; an FP32 ONNX is not converted).
        graphs: replay a captured CUDA graph (torch) / the CUDA EP's CUDA graphs (ort).
        channels_last: torch only: module and 4-D inputs in ``torch.channels_last``.
        batch: measure at this batch; ``None`` = the caller's ``MeasureSettings.batch``.
    """

    runtime: str = "torch"
    precision: str = "fp32"
    graphs: bool = False
    channels_last: bool = False
    batch: int | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> CudaSettings:
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise ConfigError(f"target 'cuda' does not accept option '{unknown[0]}'."
                              f"{did_you_mean(unknown[0], OPTIONS)}",
                              hint=f"options for cuda: {', '.join(sorted(OPTIONS))}")
        kw: dict[str, Any] = {}
        if options.get("runtime") is not None:
            kw["runtime"] = _choice("runtime", options["runtime"], RUNTIMES)
        if options.get("precision") is not None:
            kw["precision"] = _choice("precision", options["precision"], PRECISIONS)
        for key in ("graphs", "channels_last"):
            if options.get(key) is not None:
                kw[key] = _flag(key, options[key])
        if options.get("batch") is not None:
            v = options["batch"]
            if isinstance(v, bool) or not str(v).strip().isdigit() or int(v) < 1:
                raise ConfigError(f"target option batch must be an integer >= 1, got {v!r}", hint="e.g. batch: 32")
            kw["batch"] = int(v)
        s = cls(**kw)
        if s.runtime == "ort" and s.channels_last:
            raise ConfigError("target option channels_last applies to runtime torch only (ONNX Runtime picks "
                              "its own layouts)", hint="drop channels_last, or use runtime: torch")
        return s

    @property
    def mode(self) -> str:
        return "cuda-graphs" if self.graphs else "eager"


def torch_cuda_unavailable_reason() -> str | None:
    """None when torch can run on a CUDA GPU here, else exactly why not."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None): install a CUDA build"
    if torch.cuda.is_available():
        return None
    why = "torch.cuda.is_available() is False: no CUDA device visible"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"{why} (CUDA_VISIBLE_DEVICES={visible!r} hides every GPU)"
    if not Path("/proc/driver/nvidia/version").exists() and not Path("/etc/nv_tegra_release").exists():
        return f"{why} (no NVIDIA driver loaded: /proc/driver/nvidia/version is absent)"
    return (f"{why} (a driver is there; torch {torch.__version__} is built for CUDA {torch.version.cuda}: check the "
            "driver supports that CUDA, that this process may open the GPU device nodes, and on a Jetson that torch is "
            "NVIDIA's JetPack wheel)")


def ort_cuda_unavailable_reason() -> str | None:
    """None when ONNX Runtime offers the CUDA execution provider here, else why not."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return f"onnxruntime is not installed ({_HINT_ORT})"
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (available: {', '.join(providers)}; "
                f"{_HINT_ORT})")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"onnxruntime has the CUDAExecutionProvider, but CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    return None  # a missing GPU shows when the session is created (it then refuses to fall back to the CPU)


def unavailable_reason(runtime: str) -> str | None:
    return torch_cuda_unavailable_reason() if runtime == "torch" else ort_cuda_unavailable_reason()


def output_shape(dims: Sequence[Any], batch: int) -> tuple[int, ...] | None:
    """An ORT output's shape at ``batch``: a symbolic first dim is the batch; other symbols -> None."""
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif i == 0:
            out.append(int(batch))
        else:
            return None
    return tuple(out)


def ort_numpy_type(type_str: str) -> Any:
    """``'tensor(float16)'`` -> ``np.float16``; only the float types the exports use."""
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
    if type_str not in table:
        raise ConfigError(f"ONNX input/output type {type_str} is not supported by the cuda target's ort runtime",
                          hint="export float inputs and outputs")
    return table[type_str]


def no_module_error(onnx_path: Path) -> ConfigError:
    return ConfigError(
        f"the cuda target's torch runtime measures torch modules, and {Path(onnx_path).name} came without one "
        "(only the pipeline's build and measure stages and the Python API hand a module over)",
        hint="set target option runtime: ort (needs onnxruntime-gpu) to measure ONNX files on the GPU, or call "
             "CudaTarget.build_module(module, ...) / build(..., module=...); see docs/cuda.md")
