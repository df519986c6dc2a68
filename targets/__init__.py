"""Targets: the only package that touches a runtime (onnxruntime, tensorrt, ssh).

:data:`TARGETS` is the one table of targets; :func:`get_target` dispatches by name.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from targets.base import TARGETS, Engine, MeasureSettings, Target, TargetSpec


def _cpu_available() -> str | None:
    return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed (pip install onnxruntime)"


def _cuda_available() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    if not Path("/proc/driver/nvidia/version").exists() and shutil.which("nvidia-smi") is None:
        return "no NVIDIA driver / GPU on this machine"
    return None


def _tensorrt_available() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (use NVIDIA's TensorRT or L4T container)"
    return _cuda_available()


def _jetson_available() -> str | None:
    if Path("/etc/nv_tegra_release").exists():
        return _tensorrt_available()
    return "not a Jetson (no /etc/nv_tegra_release); the remote flow needs --device user@host"


def _make_cpu(options: Mapping[str, Any]) -> Target:
    from targets.cpu import CpuTarget

    return CpuTarget(options)


TARGETS.add("cpu", TargetSpec("cpu", "ONNX Runtime CPU EP", False, False, ("fp32",), None,
                              frozenset({"graph_optimization"}), _cpu_available, _make_cpu))
TARGETS.add("cuda", TargetSpec("cuda", "torch CUDA (CUDA graphs) / ORT CUDA EP", True, False, ("fp32", "fp16"), None,
                               frozenset({"precision", "cuda_graphs"}), _cuda_available, None))
TARGETS.add("tensorrt", TargetSpec("tensorrt", "TensorRT 10/11 Python API", True, False, ("fp32", "fp16", "int8"),
                                   ".plan", frozenset({"precision", "workspace_mb", "dla_core"}), _tensorrt_available, None))
TARGETS.add("jetson", TargetSpec("jetson", "TensorRT / trtexec + tegrastats (on device or over SSH)", True, True,
                                 ("fp32", "fp16", "int8"), ".plan",
                                 frozenset({"precision", "device_profile", "workspace_mb", "dla_core"}),
                                 _jetson_available, None))


def get_target(name: str, options: Mapping[str, Any] | None = None) -> Target:
    """Create the target ``name`` with validated options (raises ConfigError / SpecError)."""
    return TARGETS.get(name).create(options or {})


__all__ = ["TARGETS", "Engine", "MeasureSettings", "Target", "TargetSpec", "get_target"]
