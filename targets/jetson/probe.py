"""What the ``jetson`` target knows before it runs anything: its options (checked up front) and the
device probe (module, L4T -> JetPack, power mode, clocks, the TensorRT version of ``trtexec``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError
from targets.devices import (
    DeviceProfile,
    get_profile,
    jetpack_for_l4t,
    parse_jetson_clocks,
    parse_nv_tegra_release,
    parse_nvpmodel,
    tensorrt_for_l4t,
    trt_tuple,
)
from targets.tensorrt.settings import TrtSettings

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
    from targets.trtexec.log import decode_trt_version

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


def accuracy_on_option(options: Mapping[str, Any]) -> str:
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
        acc = accuracy_on_option(options)
        if acc not in ACCURACY_ON:
            raise ConfigError(f"target option accuracy_on '{options.get('accuracy_on')}' is not one of "
                              f"{', '.join(ACCURACY_ON)}.{did_you_mean(acc, ACCURACY_ON)}",
                              hint="accuracy_on: device (through the engine, default) | host (ONNX Runtime here)")
    if options.get("device_profile"):
        get_profile(str(options["device_profile"]))
    return runtime
