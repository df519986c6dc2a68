"""Jetson device profiles, JetPack / L4T / TensorRT versions, and parsers of what a Jetson reports.

Pure Python (no runtime imports). Sources are in ``../shared/research/deploy.md`` section 3:
the L4T -> JetPack mapping follows ``rbonghi/jetson_stats`` (``jtop/core/jetson_variables.py``),
CUDA / TensorRT per JetPack follow NVIDIA's JetPack archive and Torch-TensorRT's
``jetpack.rst``. Rows marked ``verified=False`` carry versions the research could not confirm
from a primary source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class JetPackRelease:
    """One JetPack line: the L4T releases it ships, its CUDA and TensorRT, and NVIDIA containers."""

    jetpack: str
    l4t: tuple[str, ...]  # exact L4T versions ("36.4.3"); a 2-part entry ("36.3") covers the family
    cuda: str | None
    tensorrt: str | None
    families: tuple[str, ...]  # "xavier", "orin", ...
    containers: tuple[str, ...] = ()
    verified: bool = True


JETPACKS: tuple[JetPackRelease, ...] = (
    JetPackRelease("4.6", ("32.6.1",), "10.2", "8.0.1", ("nano", "tx2", "xavier")),
    JetPackRelease("4.6.1", ("32.7.1",), "10.2", "8.2.1", ("nano", "tx2", "xavier")),
    JetPackRelease("4.6.2", ("32.7.2",), "10.2", "8.2.1", ("nano", "tx2", "xavier")),
    JetPackRelease("4.6.3", ("32.7.3",), "10.2", "8.2.1", ("nano", "tx2", "xavier")),
    JetPackRelease("4.6.4", ("32.7.4",), "10.2", "8.2.1", ("nano", "tx2", "xavier")),
    JetPackRelease("4.6.5", ("32.7.5",), "10.2", "8.2.1", ("nano", "tx2", "xavier")),
    JetPackRelease("4.6.6", ("32.7.6",), "10.2", "8.2.1", ("nano", "tx2", "xavier")),
    JetPackRelease("5.1.1", ("35.3.1",), "11.4", "8.5.2", ("xavier", "orin"),
                   ("nvcr.io/nvidia/l4t-tensorrt:r8.5.2-runtime",)),
    JetPackRelease("5.1.2", ("35.4.1",), "11.4", "8.5.2", ("xavier", "orin"),
                   ("nvcr.io/nvidia/l4t-tensorrt:r8.5.2-runtime",)),
    JetPackRelease("5.1.6", ("35.6.4",), "11.4", "8.5.2", ("xavier", "orin"),
                   ("nvcr.io/nvidia/l4t-tensorrt:r8.5.2-runtime",)),
    JetPackRelease("6.0", ("36.3",), "12.2", "8.6.2", ("orin",),
                   ("nvcr.io/nvidia/l4t-tensorrt:r8.6.2-runtime", "nvcr.io/nvidia/l4t-tensorrt:r36.3.0-runtime"),
                   verified=False),  # CUDA 12.2 marked "(verify)" in the research
    JetPackRelease("6.1", ("36.4.0",), "12.6", "10.3", ("orin",), ("nvcr.io/nvidia/l4t-jetpack:r36.4.0",)),
    JetPackRelease("6.2", ("36.4.3",), "12.6", "10.3", ("orin",), ("nvcr.io/nvidia/l4t-jetpack:r36.4.0",)),
    JetPackRelease("6.2.1", ("36.4.4", "36.4.5", "36.4.6", "36.4.7"), "12.6", "10.3", ("orin",),
                   ("nvcr.io/nvidia/l4t-jetpack:r36.4.0",)),
    JetPackRelease("6.2.2", ("36.5.0",), "12.6", "10.3", ("orin",), ("nvcr.io/nvidia/l4t-jetpack:r36.4.0",)),
    JetPackRelease("7.0", ("38.2",), "13.0", None, ("thor",), verified=False),
    JetPackRelease("7.2", ("39",), None, None, ("orin", "thor"), verified=False),
)

# TensorRT by L4T family, for versions not listed exactly above (longest prefix wins).
_TRT_BY_L4T_PREFIX: tuple[tuple[str, str], ...] = (
    ("32.6", "8.0.1"), ("32.7", "8.2.1"), ("35", "8.5.2"), ("36.3", "8.6.2"), ("36.4", "10.3"), ("36.5", "10.3"),
)


@dataclass(frozen=True)
class DeviceProfile:
    """One Jetson module: what the builder and the checks need to know about it."""

    name: str  # the --device-profile value
    module: str
    family: str  # "orin" | "xavier"
    gpu_arch: str  # "sm_87"
    memory_gb: int
    dla_cores: int
    jetpacks: tuple[str, ...]  # JetPack lines it runs (major.minor)

    @property
    def compute_capability(self) -> str:
        return f"{self.gpu_arch[3]}.{self.gpu_arch[4:]}"

    @property
    def sparse_2_4(self) -> bool:
        """2:4 sparse tensor cores: Ampere (sm_80+) and later; Orin yes, Xavier (Volta) no."""
        return int(self.gpu_arch[3:]) >= 80

    def tensorrt_versions(self) -> dict[str, str | None]:
        """JetPack -> TensorRT for the JetPack releases this module runs."""
        out: dict[str, str | None] = {}
        for jp in JETPACKS:
            if self.family in jp.families and any(jp.jetpack.startswith(line) for line in self.jetpacks):
                out[jp.jetpack] = jp.tensorrt
        return out


_ORIN_JP = ("5.1", "6.0", "6.1", "6.2", "7.2")
_XAVIER_JP = ("4.6", "5.1")

PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile("orin-nano-4gb", "Jetson Orin Nano 4GB", "orin", "sm_87", 4, 0, _ORIN_JP),
    DeviceProfile("orin-nano-8gb", "Jetson Orin Nano 8GB", "orin", "sm_87", 8, 0, _ORIN_JP),
    DeviceProfile("orin-nx-8gb", "Jetson Orin NX 8GB", "orin", "sm_87", 8, 1, _ORIN_JP),
    DeviceProfile("orin-nx-16gb", "Jetson Orin NX 16GB", "orin", "sm_87", 16, 2, _ORIN_JP),
    DeviceProfile("agx-orin-32gb", "Jetson AGX Orin 32GB", "orin", "sm_87", 32, 2, _ORIN_JP),
    DeviceProfile("agx-orin-64gb", "Jetson AGX Orin 64GB", "orin", "sm_87", 64, 2, _ORIN_JP),
    DeviceProfile("xavier-nx-8gb", "Jetson Xavier NX 8GB", "xavier", "sm_72", 8, 2, _XAVIER_JP),
    DeviceProfile("xavier-nx-16gb", "Jetson Xavier NX 16GB", "xavier", "sm_72", 16, 2, _XAVIER_JP),
    DeviceProfile("agx-xavier-32gb", "Jetson AGX Xavier 32GB", "xavier", "sm_72", 32, 2, _XAVIER_JP),
    DeviceProfile("agx-xavier-64gb", "Jetson AGX Xavier 64GB", "xavier", "sm_72", 64, 2, _XAVIER_JP),
)}


def get_profile(name: str) -> DeviceProfile:
    """The profile called ``name`` (case, spaces and underscores forgiven), or a ConfigError."""
    key = re.sub(r"[\s_]+", "-", str(name).strip().lower())
    if key in PROFILES:
        return PROFILES[key]
    raise ConfigError(f"unknown Jetson device profile '{name}'.{did_you_mean(key, PROFILES)}",
                      hint=f"known profiles: {', '.join(PROFILES)}")


# --------------------------------------------------------------------------- versions


def parse_nv_tegra_release(text: str) -> str | None:
    """L4T version from ``/etc/nv_tegra_release``.

    ``# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ...``
    gives ``"36.4.3"``; ``# R32 (release), REVISION: 7.1, ...`` gives ``"32.7.1"``.
    """
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)", text or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _matches(l4t: str, entry: str) -> bool:
    return l4t == entry or l4t.startswith(entry + ".")


def jetpack_for_l4t(l4t: str | None) -> JetPackRelease | None:
    """The JetPack release of an L4T version (exact entries first, then a family entry)."""
    if not l4t:
        return None
    for jp in JETPACKS:
        if l4t in jp.l4t:
            return jp
    for jp in JETPACKS:
        if any(e.count(".") < 2 and _matches(l4t, e) for e in jp.l4t):
            return jp
    return None


def tensorrt_for_l4t(l4t: str | None) -> str | None:
    """The TensorRT version that JetPack ships with this L4T (None when unknown)."""
    jp = jetpack_for_l4t(l4t)
    if jp is not None and jp.tensorrt:
        return jp.tensorrt
    best = None
    for prefix, trt in _TRT_BY_L4T_PREFIX:
        if l4t and _matches(l4t, prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, trt)
    return best[1] if best else None


def trt_major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0]) if version else None
    except ValueError:
        return None


def trt_tuple(version: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version or ""))[:3]


# --------------------------------------------------------------------------- detection


def detect_profile(model: str | None, mem_total_mb: float | None) -> DeviceProfile | None:
    """Profile from ``/proc/device-tree/model`` and ``MemTotal``; None when not a known module.

    Model strings look like "NVIDIA Jetson Orin Nano Developer Kit", "NVIDIA Jetson AGX Orin
    Developer Kit", "NVIDIA Jetson Xavier NX Developer Kit", "Jetson-AGX" (AGX Xavier). The
    memory size picks between variants of one module (MemTotal is a little under the nominal size).
    """
    m = re.sub(r"[\s_-]+", " ", (model or "").lower())
    if "orin" in m:
        kind = "orin-nano" if "nano" in m else "orin-nx" if " nx" in m else "agx-orin"
    elif "xavier" in m:
        kind = "xavier-nx" if " nx" in m else "agx-xavier"
    elif m.strip() in ("jetson agx", "jetson agx xavier"):
        kind = "agx-xavier"
    else:
        return None
    cands = [p for n, p in PROFILES.items() if n.startswith(kind)]
    if not mem_total_mb:
        return cands[0] if len(cands) == 1 else None
    gb = mem_total_mb / 1024.0
    return min(cands, key=lambda p: abs(p.memory_gb - gb))


@dataclass(frozen=True)
class PowerMode:
    name: str | None
    mode_id: int | None


def parse_nvpmodel(text: str) -> PowerMode:
    """``nvpmodel -q`` -> mode name and id; the name is what identifies a mode across BSPs.

    Output: ``NV Power Mode: MAXN`` then the id on the next line (``NV Fan Mode`` and
    ``NVPM WARN`` lines may come first).
    """
    lines = [ln.strip() for ln in (text or "").splitlines()]
    for i, ln in enumerate(lines):
        m = re.match(r"NV Power Mode\s*:\s*(\S.*?)\s*$", ln)
        if m:
            mode_id = None
            for nxt in lines[i + 1:i + 3]:
                if nxt.isdigit():
                    mode_id = int(nxt)
                    break
            return PowerMode(m.group(1), mode_id)
    return PowerMode(None, None)


@dataclass(frozen=True)
class ClockState:
    locked: bool | None  # None: could not tell (no output, or not root)
    gpu_mhz: tuple[float, float, float] | None = None  # min, max, current
    cpus_pinned: int = 0
    cpus_online: int = 0
    power_mode: str | None = None


_FREQ = re.compile(r"MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)")


def parse_jetson_clocks(text: str) -> ClockState:
    """``jetson_clocks --show`` -> whether clocks are pinned at their maximum.

    Lines used: ``cpuN: Online=1 Governor=... MinFreq=A MaxFreq=B CurrentFreq=C ...`` and
    ``GPU MinFreq=A MaxFreq=B CurrentFreq=C``. ``jetson_clocks`` sets MinFreq to MaxFreq, so
    locked = every online CPU and the GPU have MinFreq == MaxFreq.
    """
    cpus_online = cpus_pinned = 0
    gpu = None
    mode = None
    for ln in (text or "").splitlines():
        s = ln.strip()
        cm = re.match(r"cpu\d+:\s*Online=(\d)", s)
        f = _FREQ.search(s)
        if cm and cm.group(1) == "1" and f:
            cpus_online += 1
            cpus_pinned += int(f.group(1) == f.group(2))
        elif s.startswith("GPU ") and f:
            gpu = (int(f.group(1)) / 1e6, int(f.group(2)) / 1e6, int(f.group(3)) / 1e6)
        pm = re.match(r"NV Power Mode\s*:\s*(\S.*?)\s*$", s)
        if pm:
            mode = pm.group(1)
    if gpu is None and cpus_online == 0:
        return ClockState(None, power_mode=mode)
    locked = cpus_pinned == cpus_online and (gpu is None or gpu[0] == gpu[1])
    return ClockState(locked, gpu, cpus_pinned, cpus_online, mode)
