"""Targets: the only package that touches a runtime (onnxruntime, tensorrt, ssh).

:data:`TARGETS` is the one table of targets; :func:`get_target` dispatches by name.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from targets.base import TARGETS, Engine, MeasureSettings, Target, TargetSpec
from targets.ssh import SSH_OPTIONS

# option names only (the modules themselves are imported when a target is created)
TENSORRT_OPTIONS = frozenset({"precision", "workspace_mb", "dla_core", "sparsity", "max_batch", "timing_cache_dir",
                              "calibration_batches"})
JETSON_OPTIONS = frozenset({"device", "device_profile", "precision", "workspace_mb", "dla_core", "sparsity",
                            "max_batch", "timing_cache_dir", "remote_path"}) | SSH_OPTIONS


def _cpu_available() -> str | None:
    return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed (pip install onnxruntime)"


def _cuda_available() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    if not Path("/proc/driver/nvidia/version").exists() and shutil.which("nvidia-smi") is None:
        return "no NVIDIA driver / GPU on this machine"
    return None


def _tensorrt_available() -> str | None:
    why_gpu = _cuda_available()
    if importlib.util.find_spec("tensorrt") is None:
        return ("the tensorrt Python package is not installed (NVIDIA's TensorRT container has it; pip only where "
                "NVIDIA's index is reachable)" + ("" if why_gpu is None else f", and {why_gpu}"))
    return why_gpu


def _ssh_client() -> str | None:
    return None if shutil.which("ssh") and shutil.which("scp") else "the OpenSSH client (ssh, scp) is not installed"


def _jetson_available() -> str | None:
    if Path("/etc/nv_tegra_release").exists():
        return None if shutil.which("trtexec") or Path("/usr/src/tensorrt/bin/trtexec").exists() else \
            "a Jetson, but trtexec is missing (JetPack installs it in /usr/src/tensorrt/bin)"
    why_ssh = _ssh_client()
    return "not a Jetson (no /etc/nv_tegra_release) and no --device given" + (
        "" if why_ssh is None else f"; over SSH: {why_ssh}")


def _make_cpu(options: Mapping[str, Any]) -> Target:
    if options.get("device"):
        if _ssh_client() is not None:
            raise ConfigError(f"--device needs ssh here: {_ssh_client()}", hint="apt-get install openssh-client")
        from targets.remote import RemoteCpuTarget

        return RemoteCpuTarget(options)
    remote_only = sorted(set(options) & (_REMOTE_CPU_OPTIONS - {"device"}))
    if remote_only:
        raise ConfigError(f"target option '{remote_only[0]}' only applies with --device",
                          hint="pass --device user@host[:port], or drop the option")
    from targets.cpu import CpuTarget

    return CpuTarget(options)


def _make_tensorrt(options: Mapping[str, Any]) -> Target:
    from targets.tensorrt import TensorRTTarget

    return TensorRTTarget(options)


def _make_jetson(options: Mapping[str, Any]) -> Target:
    from targets.jetson import JetsonTarget

    return JetsonTarget(options)


_REMOTE_CPU_OPTIONS = frozenset({"device", "remote_python"}) | SSH_OPTIONS

TARGETS.add("cpu", TargetSpec("cpu", "ONNX Runtime CPU EP (here, or on --device over SSH)", False, True, ("fp32",),
                              None, frozenset({"graph_optimization"}) | _REMOTE_CPU_OPTIONS, _cpu_available,
                              _make_cpu))
TARGETS.add("cuda", TargetSpec("cuda", "torch CUDA (CUDA graphs) / ORT CUDA EP", True, False, ("fp32", "fp16"), None,
                               frozenset({"precision", "cuda_graphs"}), _cuda_available, None))
TARGETS.add("tensorrt", TargetSpec("tensorrt", "TensorRT 10/11 Python API", True, False, ("fp32", "fp16", "int8"),
                                   ".plan", TENSORRT_OPTIONS, _tensorrt_available, _make_tensorrt))
TARGETS.add("jetson", TargetSpec("jetson", "trtexec + tegrastats on a Jetson (on the device or over SSH)",
                                 True, True, ("fp32", "fp16", "int8"), ".plan", JETSON_OPTIONS,
                                 _jetson_available, _make_jetson))


def get_target(name: str, options: Mapping[str, Any] | None = None) -> Target:
    """Create the target ``name`` with validated options (raises ConfigError / SpecError)."""
    return TARGETS.get(name).create(options or {})


__all__ = ["TARGETS", "Engine", "MeasureSettings", "Target", "TargetSpec", "get_target"]
