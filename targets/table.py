"""The one table of targets: name, runtime, GPU, remote, precisions, engine suffix, options, availability.

Each row is a :class:`~targets.base.TargetSpec`; its factory imports the target's module only when
the target is created, so listing the table (``pipeline targets``) imports no runtime.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from targets.base import TARGETS, Target, TargetSpec
from targets.ssh import SSH_OPTIONS

# option names only (the modules themselves are imported when a target is created)
TENSORRT_OPTIONS = frozenset({"precision", "workspace_mb", "dla_core", "sparsity", "max_batch", "timing_cache_dir",
                              "calibration_batches"})
JETSON_OPTIONS = frozenset({"device", "device_profile", "precision", "workspace_mb", "dla_core", "sparsity",
                            "max_batch", "timing_cache_dir", "remote_path", "runtime", "remote_python",
                            "accuracy_on"}) | SSH_OPTIONS
CUDA_OPTIONS = frozenset({"runtime", "precision", "graphs", "channels_last", "batch"})


@dataclass(frozen=True)
class _ValidatedSpec(TargetSpec):
    """A table row whose option *values* are checked up front as well (before availability, before any work)."""

    validate: Callable[[Mapping[str, Any]], object] | None = None

    def check_options(self, options: Mapping[str, Any]) -> None:
        super().check_options(options)
        if self.validate is not None:
            self.validate(options)


def _cpu_available() -> str | None:
    return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed (pip install onnxruntime)"


def _cuda_available() -> str | None:
    """None when either runtime of the ``cuda`` target works here (the chosen one is checked at creation)."""
    from targets.cuda.options import ort_cuda_unavailable_reason, torch_cuda_unavailable_reason

    why_torch = torch_cuda_unavailable_reason()
    if why_torch is None:
        return None
    why_ort = ort_cuda_unavailable_reason()
    return None if why_ort is None else f"{why_torch}; runtime ort: {why_ort}"


def _tensorrt_available() -> str | None:
    from targets.cuda.options import torch_cuda_unavailable_reason

    why_gpu = torch_cuda_unavailable_reason()  # the tensorrt target's buffers and events are torch CUDA
    if importlib.util.find_spec("tensorrt") is None:
        return ("the tensorrt Python package is not installed (NVIDIA's TensorRT container has it; pip only where "
                "NVIDIA's index is reachable)" + ("" if why_gpu is None else f", and {why_gpu}"))
    return why_gpu


def _ssh_client() -> str | None:
    return None if shutil.which("ssh") and shutil.which("scp") else "the OpenSSH client (ssh, scp) is not installed"


def _jetson_available() -> str | None:
    if Path("/etc/nv_tegra_release").exists():
        # without trtexec, runtime ort still works; runtime trtexec then fails at its probe with the path to install
        return None
    why_ssh = _ssh_client()
    return "not a Jetson (no /etc/nv_tegra_release) and no --device given" + (
        "" if why_ssh is None else f"; over SSH: {why_ssh}")


def _make_cpu(options: Mapping[str, Any]) -> Target:
    if options.get("device"):
        if _ssh_client() is not None:
            raise ConfigError(f"--device needs ssh here: {_ssh_client()}", hint="apt-get install openssh-client")
        from targets.ort.remote import RemoteCpuTarget

        return RemoteCpuTarget(options)
    remote_only = sorted(set(options) & (_REMOTE_CPU_OPTIONS - {"device"}))
    if remote_only:
        raise ConfigError(f"target option '{remote_only[0]}' only applies with --device",
                          hint="pass --device user@host[:port], or drop the option")
    from targets.ort.cpu import CpuTarget

    return CpuTarget(options)


def _make_tensorrt(options: Mapping[str, Any]) -> Target:
    from targets.tensorrt.target import TensorRTTarget

    return TensorRTTarget(options)


def _make_jetson(options: Mapping[str, Any]) -> Target:
    from targets.jetson.target import JetsonTarget

    return JetsonTarget(options)


def _make_cuda(options: Mapping[str, Any]) -> Target:
    from targets.cuda.target import make_cuda

    return make_cuda(options)


def _check_cuda_options(options: Mapping[str, Any]) -> None:
    from targets.cuda.options import CudaSettings

    CudaSettings.from_options(options)


def _check_jetson_options(options: Mapping[str, Any]) -> None:
    from targets.jetson.probe import check_jetson_options

    check_jetson_options(options)


_REMOTE_CPU_OPTIONS = frozenset({"device", "remote_python"}) | SSH_OPTIONS

def _check_cpu_options(options: Mapping[str, Any]) -> None:
    level = options.get("graph_optimization")
    if level is not None and str(level) not in GRAPH_OPTIMIZATION:
        from core.errors import did_you_mean

        raise ConfigError(f"target option graph_optimization '{level}' is not one of "
                          f"{', '.join(GRAPH_OPTIMIZATION)}.{did_you_mean(str(level), GRAPH_OPTIMIZATION)}",
                          hint="graph_optimization: all | extended | basic | disable")


GRAPH_OPTIMIZATION = ("all", "extended", "basic", "disable")  # ONNX Runtime's levels (targets/ort/worker.py)

TARGETS.add("cpu", _ValidatedSpec("cpu", "ONNX Runtime CPU EP (here, or on --device over SSH)", False, True, ("fp32",),
                                  None, frozenset({"graph_optimization"}) | _REMOTE_CPU_OPTIONS, _cpu_available,
                                  _make_cpu, _check_cpu_options))
TARGETS.add("cuda", _ValidatedSpec("cuda", "torch CUDA, eager or CUDA graphs (runtime ort: ONNX Runtime CUDA EP)",
                                   True, False, ("fp32", "fp16"), None, CUDA_OPTIONS, _cuda_available, _make_cuda,
                                   _check_cuda_options))
def _check_tensorrt_options(options: Mapping[str, Any]) -> None:
    from targets.tensorrt.settings import TrtSettings

    TrtSettings.from_options(options)


TARGETS.add("tensorrt", _ValidatedSpec("tensorrt", "TensorRT 10/11 Python API", True, False, ("fp32", "fp16", "int8"),
                                       ".plan", TENSORRT_OPTIONS, _tensorrt_available, _make_tensorrt,
                                       _check_tensorrt_options))
TARGETS.add("jetson", _ValidatedSpec("jetson", "trtexec + tegrastats on a Jetson, on the device or over SSH "
                                               "(runtime ort: ONNX Runtime there)",
                                     True, True, ("fp32", "fp16", "int8"), ".plan", JETSON_OPTIONS,
                                     _jetson_available, _make_jetson, _check_jetson_options))


def get_target(name: str, options: Mapping[str, Any] | None = None) -> Target:
    """Create the target ``name`` with validated options (raises ConfigError / SpecError)."""
    return TARGETS.get(name).create(options or {})

